"""Optional download helper for machines with internet access: fetch a file, verify its SHA-256, and only then move
it into place (atomically), so a partial or corrupted download never looks like a data file.

    python -m wtext.data.download URL DEST --sha256 HEX
"""

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


class ChecksumError(ValueError):
    pass


def download(url: str, destination: str | Path, sha256: str, *, timeout: float = 60.0, progress: bool = False) -> Path:
    """Downloads url to destination unless a file with the right checksum is already there."""
    destination = Path(destination)
    expected = sha256.lower()
    if destination.is_file() and file_sha256(destination) == expected:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as handle:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and total:
                    print(f"\r{destination.name}: {done / total:6.1%}", end="", file=sys.stderr)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise OSError(f"downloading {url} failed: {error}") from None
    if progress:
        print(file=sys.stderr)
    actual = digest.hexdigest()
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: SHA-256 {actual} does not match the expected {expected}; file discarded")
    os.replace(partial, destination)
    return destination


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wtext.data.download", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("destination")
    parser.add_argument("--sha256", required=True, help="expected SHA-256 of the file (hex)")
    args = parser.parse_args(argv)
    try:
        path = download(args.url, args.destination, args.sha256, progress=True)
    except (OSError, ChecksumError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
