"""The opt-in profile of release builds (EMBER_PGO=1; README "Building"), for the Python
harnesses that build the watchdog (bench/run, scripts/hot-text). ./build.sh does the same
in shell."""
import os
import subprocess
import sys

FLAGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pgo-flags")


def pgo_rustflags(who):
    """CARGO_ENCODED_RUSTFLAGS for a build with the profile when EMBER_PGO=1, else None.
    Exits, saying why, when EMBER_PGO=1 and scripts/pgo-flags cannot give them."""
    if os.environ.get("EMBER_PGO") != "1":
        return None
    flags = subprocess.run([FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if flags.returncode != 0:
        sys.exit("%s: EMBER_PGO=1, but %s" % (who, flags.stderr.strip()))
    return flags.stdout
