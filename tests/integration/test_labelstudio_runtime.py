"""The session's real Label Studio: the admin token works, annotators get accounts and tokens of their own."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration


def whoami(url: str, token: str) -> dict:
    response = requests.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def test_admin_and_two_annotators_have_their_own_tokens(label_studio):
    assert whoami(label_studio.url, label_studio.api_key)["email"] == label_studio.email
    first, second = label_studio.create_user("ann"), label_studio.create_user("ann")
    assert len({first.token, second.token, label_studio.token}) == 3
    assert whoami(label_studio.url, first.token)["email"] == first.email
    assert whoami(label_studio.url, second.token)["email"] == second.email


def test_a_wrong_token_is_refused(label_studio):
    response = requests.get(f"{label_studio.url}/api/projects", headers={"Authorization": "Token " + "0" * 40}, timeout=10)
    assert response.status_code == 401
