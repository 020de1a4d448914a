"""Configuration (contract section 1): bad values exit 2 with one line; --help; --version."""

import json
import os
import re
import subprocess

import pytest

from harness import BIN, REPO, Warm, clean_env, free_port, run_oneshot

# Every variable CONTRACT.md names, which `watchdog --help` must list.
CONTRACT_VARIABLES = [
    "WARM", "EXECUTION_ID", "INVOCATION_PAYLOAD", "INPUT_DATA", "NORN_REQUEST_BODY",
    "EXECUTION_MODE", "HANDLER_MODULE", "HANDLER_PATH", "HANDLER_FUNCTION", "WATCHDOG_CMD",
    "HEALTH_URL", "RUNTIME_URL", "READY_TIMEOUT_MS", "INPUT_FILE", "OUTPUT_FILE", "KILL_GRACE_MS",
    "WARM_PORT", "PORT", "BIND_ADDRESS", "INVOKE_TOKEN", "MAX_BODY_BYTES", "MAX_CONCURRENCY",
    "QUEUE_DEPTH", "TIMEOUT_MS", "ONESHOT_OUTPUT", "TRACE_ID", "FUNCTION_NAME",
    "CALLBACK_URL", "CALLBACK_TOKEN", "CALLBACK_ATTEMPTS", "CALLBACK_TIMEOUT_MS",
    "CALLBACK_ALLOWED_ORIGINS", "LOG_FORMAT", "LOG_LEVEL", "DRAIN_TIMEOUT_MS",
    "INPUT_SCHEMA", "OUTPUT_SCHEMA",
]


def oneshot_env(**overrides):
    """A valid one-shot configuration (cat echo, result on stdout) plus overrides."""
    base = {"EXECUTION_MODE": "STDIO", "WATCHDOG_CMD": "cat", "EXECUTION_ID": "exec-cfg",
            "INVOCATION_PAYLOAD": '{"input": 1}'}
    base.update(overrides)
    return clean_env(**base)


def stderr_lines(cp):
    return [l for l in cp.stderr.decode(errors="replace").splitlines() if l.strip()]


def test_valid_base_configuration_succeeds():
    # The base every bad-value case changes one variable of.
    cp = run_oneshot(oneshot_env(), timeout=10)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert json.loads(cp.stdout.decode().splitlines()[-1])["output"] == {"input": 1}


@pytest.mark.parametrize("var,value", [
    ("WARM", "maybe"),
    ("EXECUTION_MODE", "bogus"),
    ("TIMEOUT_MS", "abc"),
    ("MAX_CONCURRENCY", "-1"),
    ("LOG_FORMAT", "xml"),
    ("ONESHOT_OUTPUT", "everything"),
    ("CALLBACK_ATTEMPTS", "three"),
    ("RELOAD", "sometimes"),
])
def test_bad_value_exits_2_with_one_line_naming_it(var, value):
    cp = run_oneshot(oneshot_env(**{var: value}), timeout=10)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    lines = stderr_lines(cp)
    assert len(lines) == 1, lines
    assert var in lines[0] and value in lines[0], lines[0]


def test_stdio_without_watchdog_cmd_exits_2():
    cp = run_oneshot(oneshot_env(WATCHDOG_CMD=None), timeout=10)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    lines = stderr_lines(cp)
    assert len(lines) == 1, lines
    assert "WATCHDOG_CMD" in lines[0], lines[0]


def test_bad_value_in_warm_mode_exits_2_before_listening():
    port = free_port()
    env = clean_env(WARM="true", PORT=port, EXECUTION_MODE="STDIO", WATCHDOG_CMD="cat", TIMEOUT_MS="abc")
    cp = run_oneshot(env, timeout=10)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    lines = stderr_lines(cp)
    assert len(lines) == 1 and "TIMEOUT_MS" in lines[0] and "abc" in lines[0], lines


def test_vocabulary_is_case_insensitive_oneshot():
    cp = run_oneshot(oneshot_env(EXECUTION_MODE="stdio", WARM="False", LOG_FORMAT="JSON"), timeout=10)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    assert json.loads(cp.stdout.decode().splitlines()[-1])["success"] is True


def test_vocabulary_is_case_insensitive_warm():
    env = clean_env(WARM="TRUE", EXECUTION_MODE="stdio", WATCHDOG_CMD="cat", LOG_FORMAT="Text")
    with Warm(env) as w:
        r = w.post(json={"case": "insensitive"})
        assert r.status_code == 200, r.text
        assert r.json() == {"case": "insensitive"}


def test_help_exits_0_and_lists_every_variable():
    cp = subprocess.run([BIN, "--help"], env=clean_env(), stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=10)
    assert cp.returncode == 0, cp.stderr
    text = (cp.stdout + cp.stderr).decode(errors="replace")
    missing = [v for v in CONTRACT_VARIABLES if not re.search(r"(?<![A-Z_])" + v + r"(?![A-Z_])", text)]
    assert not missing, f"--help does not mention {missing}"
    assert re.search(r"(?<![A-Z_])RELOAD(?![A-Z_])", text), "--help does not mention RELOAD"
    # with their defaults
    for default in ("30000", "10000", "25000", "5000", "8080"):
        assert default in text, default


def test_version_exits_0():
    cp = subprocess.run([BIN, "--version"], env=clean_env(), stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=10)
    assert cp.returncode == 0, cp.stderr
    assert re.search(r"\d+\.\d+\.\d+", (cp.stdout + cp.stderr).decode()), cp.stdout


def nopy_and_its_libraries() -> tuple[str, str]:
    """The build without Python and what `ldd` says it loads."""
    # test.sh builds this binary with `cargo build -p watchdog` (no python feature).
    nopy = os.environ.get("WATCHDOG_NOPY_BIN", str(REPO / "target" / "debug" / "watchdog-nopy"))
    assert os.path.exists(nopy), f"{nopy} missing: build it with `cargo build -p watchdog`"
    ldd = subprocess.run(["ldd", nopy], capture_output=True, text=True, timeout=30)
    assert ldd.returncode == 0, ldd.stderr
    return nopy, ldd.stdout


def test_build_without_python_links_no_libpython_and_refuses_python():
    nopy, libraries = nopy_and_its_libraries()
    assert "libpython" not in libraries, libraries
    r = subprocess.run([nopy], env=clean_env(EXECUTION_MODE="PYTHON"), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert "EXECUTION_MODE" in r.stderr and "without Python" in r.stderr, r.stderr


def test_build_without_python_loads_no_libm():
    # Its one libm function (tokio's `pow`; `log2` in a debug build) is the
    # binary's own (watchdog/src/no_libm.rs): libm.so.6 is neither needed nor loaded.
    _, libraries = nopy_and_its_libraries()
    assert "libc.so" in libraries, libraries  # a glibc build, as test.sh makes it
    assert "libm.so" not in libraries, (
        "the build without Python needs libm again; a libm function it now calls can "
        "be defined in watchdog/src/no_libm.rs:\n" + libraries)
