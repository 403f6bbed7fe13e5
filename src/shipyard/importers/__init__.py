"""Models from the tools users leave, stored as Shipyard versions (`shipyard import …`)."""
