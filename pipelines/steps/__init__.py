"""The study's steps, one module each (a function and its config). Kept here, light to import, is the one thing
several steps read alike: the series a run's evaluation record (eval.json) belongs to."""


def series_of(record: dict) -> str:
    """What fits and reports group runs by: the family, or in image studies `<stream>-<family>`."""
    return record.get("series") or record["family"]
