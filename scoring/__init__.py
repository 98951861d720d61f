"""The science of active label cleaning: priority rules, selectors and the relabelling simulation.

Nothing here knows Label Studio, Flask or Redis; everything can be driven from a notebook.
"""
