"""The demo: a redistributable image dataset with a known truth, and simulated annotators for Label Studio."""
