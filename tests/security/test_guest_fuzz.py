"""The guest init's parsers under libFuzzer (guest/fuzz/).

Each harness is built with clang's fuzzer, address and undefined-behaviour
sanitizers and run for a bounded time from a seed corpus of real frames
written by the host encoder, plus the regression inputs kept in
guest/fuzz/regressions/<harness>/. Any crash, sanitizer report, leak, hang or
broken harness invariant fails the test and prints the input.

MICROAGENT_FUZZ_SECONDS sets the time per harness (default 15).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.channel.frames import FrameDecoder

REPO = Path(__file__).resolve().parents[2]
FUZZ_DIR = REPO / "guest" / "fuzz"
SECONDS = int(os.environ.get("MICROAGENT_FUZZ_SECONDS", "15"))
INSTALL_HINT = "install clang and libclang-rt-dev (libFuzzer) with scripts/host-deps.sh (`make install` runs it)"

# harness -> the seed corpus it starts from (see guest/fuzz/seeds.py)
HARNESSES = {"fuzz_json": "json", "fuzz_frame": "channel", "fuzz_dispatch": "channel"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build every harness and write the seed corpora into one temp dir."""
    if shutil.which("clang") is None:
        pytest.fail(f"clang is missing: {INSTALL_HINT}")
    build = tmp_path_factory.mktemp("guest-fuzz")
    made = subprocess.run(["make", "-s", "-j2", "-C", str(FUZZ_DIR), f"BUILD={build}"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"building the guest fuzzers failed ({INSTALL_HINT}):\n{made.stdout}{made.stderr}")
    seeded = subprocess.run([sys.executable, str(FUZZ_DIR / "seeds.py"), str(build / "seeds")],
                            capture_output=True, text=True)
    assert seeded.returncode == 0, seeded.stderr
    return build


def describe_input(data: bytes, harness: str) -> str:
    """The crashing input as Python bytes, and as frames when it is channel traffic."""
    lines = [f"{len(data)} bytes: {data[:2048]!r}{' ...' if len(data) > 2048 else ''}"]
    if HARNESSES[harness] == "channel":
        for event in FrameDecoder().feed(data)[:32]:
            lines.append(f"  {event!r}"[:300])
    return "\n".join(lines)


def run_stats(log: str) -> tuple[int, int, int]:
    """(runs, seconds, coverage) from libFuzzer's closing lines."""
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    cov = re.findall(r"cov: (\d+) ft: \d+", log)
    return (int(done.group(1)) if done else 0, int(done.group(2)) if done else 0,
            int(cov[-1]) if cov else 0)


@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_guest_parser_survives_fuzzing(fuzz_build: Path, harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    inputs = [corpus, fuzz_build / "seeds" / HARNESSES[harness]]
    regressions = FUZZ_DIR / "regressions" / harness
    if regressions.is_dir():
        inputs.append(regressions)
    cmd = [str(fuzz_build / harness), f"-max_total_time={SECONDS}", "-timeout=10",
           "-rss_limit_mb=1536", "-print_final_stats=1", f"-dict={FUZZ_DIR / 'channel.dict'}",
           f"-artifact_prefix={artifacts}/", *map(str, inputs)]
    # Sanitizer options are fixed here so a caller's environment cannot turn checks off.
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                          timeout=SECONDS * 4 + 120, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    found = sorted(artifacts.iterdir())
    if proc.returncode != 0 or found:
        report = "\n\n".join(f"{p.name}: {describe_input(p.read_bytes(), harness)}" for p in found)
        tail = "\n".join(line for line in log.splitlines() if "Uses:" not in line)[-6000:]
        pytest.fail(f"{harness} failed (exit {proc.returncode}); reproduce with "
                    f"`make -C guest fuzz && guest/build/fuzz/{harness} FILE`, then keep FILE "
                    f"in guest/fuzz/regressions/{harness}/ once fixed.\n{report}\n--- libFuzzer ---\n{tail}")
    runs, seconds, cov = run_stats(log)
    print(f"{harness}: {runs} runs in {seconds} s, cov {cov}")
    assert runs > 1000, f"{harness} barely ran:\n{log[-3000:]}"
    assert cov > 50, f"{harness} covered almost nothing:\n{log[-3000:]}"
