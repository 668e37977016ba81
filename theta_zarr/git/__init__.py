"""The git face: filter-process protocol, install, attributes, repository queries.

Nothing here touches chunk bytes; it translates between git and the core.
"""
