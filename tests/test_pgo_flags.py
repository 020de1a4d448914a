"""scripts/pgo-flags: the flags of a release build with the committed profile
(scripts/pgo, opt-in with EMBER_PGO=1), and the reason when it cannot be used.
Runs the script in a copy of the tree's layout with a stand-in `rustc`, except the
last two tests, which check the committed profile against this machine's rustc."""

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import stat
import subprocess

import pytest

from harness import REPO

SCRIPT = REPO / "scripts" / "pgo-flags"


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "pgo-flags")
    (tmp_path / "watchdog").mkdir()
    (tmp_path / "watchdog" / "pgo.profdata").write_bytes(b"profile one")
    (tmp_path / "watchdog" / "pgo.llvm").write_text("22\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rustc = bin_dir / "rustc"
    rustc.write_text("#!/bin/sh\necho 'rustc 1.95.0'\necho \"LLVM version: ${FAKE_LLVM:-22.1.2}\"\n")
    rustc.chmod(rustc.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def flags(tree, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "EMBER_PGO")}
    full["PATH"] = "%s:%s" % (tree / "bin", os.environ["PATH"])
    full.update(env)
    return subprocess.run([str(tree / "scripts" / "pgo-flags")], env=full,
                          capture_output=True, text=True, timeout=30)


def test_flags_name_a_copy_of_the_profile_by_its_content(tree):
    out = flags(tree)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split("\x1f")
    digest = hashlib.sha256(b"profile one").hexdigest()[:16]
    copy = tree / "target" / "pgo" / (digest + ".profdata")
    assert words == ["-Cprofile-use=%s" % copy, "-Cllvm-args=-no-pgo-warn-mismatch"]
    assert copy.read_bytes() == b"profile one"

    # Another profile is another path, so cargo rebuilds with it.
    (tree / "watchdog" / "pgo.profdata").write_bytes(b"profile two")
    again = flags(tree)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("\x1f")[0] != words[0]


def test_rustflags_words_come_first(tree):
    out = flags(tree, RUSTFLAGS="-Ctarget-cpu=native  --cfg tokio_unstable")
    assert out.returncode == 0, out.stderr
    words = out.stdout.split("\x1f")
    assert words[:3] == ["-Ctarget-cpu=native", "--cfg", "tokio_unstable"]
    assert words[3].startswith("-Cprofile-use=")


@pytest.mark.parametrize("env, setup, reason", [
    ({"FAKE_LLVM": "21.1.0"}, None, "rustc's LLVM is 21, the profile's 22"),
    ({"CARGO_ENCODED_RUSTFLAGS": "-Copt-level=2"}, None, "CARGO_ENCODED_RUSTFLAGS is set"),
    ({}, "no-profile", "no watchdog/pgo.profdata"),
])
def test_an_unusable_profile_says_why(tree, env, setup, reason):
    if setup == "no-profile":
        (tree / "watchdog" / "pgo.profdata").unlink()
    out = flags(tree, **env)
    assert out.returncode == 1
    assert out.stdout == ""
    assert reason in out.stderr, out.stderr
    assert not (tree / "target" / "pgo").exists()


def test_committed_profile_is_for_this_rustc():
    """With another LLVM, EMBER_PGO=1 builds would stop with the reason: regenerate
    the profile with scripts/pgo."""
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("CARGO_ENCODED_RUSTFLAGS", "EMBER_PGO")})
    assert out.returncode == 0, out.stderr


def test_committed_profile_is_read_by_rustc(tmp_path):
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "EMBER_PGO")})
    assert out.returncode == 0, out.stderr
    source = tmp_path / "main.rs"
    source.write_text("fn main() { println!(\"ok\"); }\n")
    build = subprocess.run(["rustc", "-O"] + out.stdout.split("\x1f") +
                           ["-o", str(tmp_path / "main"), str(source)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    # An unreadable profile is only a warning ("invalid instrumentation profile data").
    assert "warning" not in build.stderr, build.stderr
    assert subprocess.run([str(tmp_path / "main")], capture_output=True, text=True).stdout == "ok\n"


def test_pgo_script_loads_and_records_this_rustcs_llvm():
    """scripts/pgo (which takes minutes to run) at least loads, with scripts/hot-text
    whose workloads it runs, and reads the LLVM version the profile was written by."""
    path = str(REPO / "scripts" / "pgo")
    loader = importlib.machinery.SourceFileLoader("pgo_script", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("pgo_script", loader))
    loader.exec_module(module)
    assert callable(module.hot_text.workloads)
    assert module.rustc_llvm(module.rustc_vv()) == (REPO / "watchdog" / "pgo.llvm").read_text().strip()
