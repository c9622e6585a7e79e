"""Real text that packages provide, for tests, benchmarks and examples (nothing is downloaded at run time):

- the Python standard library's sources, which every machine with Python has;
- GCIDE, the GNU Collaborative International Dictionary of English: 40 MB of English, a few bytes of it not UTF-8,
  from Debian's `dict-gcide` package where the setup could fetch it (`make setup` unpacks it into data/debian; an
  installed package is found too). It is a dictzip file, which arscale reads as gzip.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GCIDE = "usr/share/dictd/gcide.dict.dz"
DEBIAN_DATA_ENV = "ARSCALE_DEBIAN_DATA"  # a folder where Debian packages were unpacked (dpkg -x)
PROJECT_DEBIAN_DATA = Path(__file__).resolve().parents[1] / "data" / "debian"


def gcide() -> Path | None:
    """The GCIDE file, or None where dict-gcide is neither unpacked for the project nor installed."""
    for root in (os.environ.get(DEBIAN_DATA_ENV), PROJECT_DEBIAN_DATA, "/"):
        if root and (Path(root) / GCIDE).is_file():
            return Path(root) / GCIDE
    return None
