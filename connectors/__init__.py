"""Label Studio through label-studio-sdk: label counts in, rankings and re-opened tasks out, the budget ledger.

No torch here: connectors run in the web process and in light workers.
"""
