"""Grow or shrink an Apptainer ext3 overlay with `overlayctl resize`, into a new output file.

The input image (another rule's output) is copied under a shared lock, so a container writing to
it makes the job fail at once with E_LOCKED; the copy (holes kept) is then resized crash-safely.
"""

__author__ = "overlay-action"
__copyright__ = "Copyright 2026, overlay-action"
__license__ = "Apache-2.0"

import json
import os
import subprocess
import sys

# --- common: begin (scripts/gen-workflows.mjs copies packages/snakemake/wrapper-common.py here) ---
# "Try again later": these codes end the job with this status (give the rule `retries:`).
RETRYABLE = 75  # gen-workflows: retryable
RETRYABLE_CODES = ("E_LOCKED", "E_TIMEOUT")  # gen-workflows: retryable-codes
LOG = open(snakemake.log[0], "a") if snakemake.log else None


def say(message):
    """A line for the job's stderr and, when the rule has `log:`, its log file."""
    print(message, file=sys.stderr, flush=True)
    if LOG:
        print(message, file=LOG, flush=True)


def overlayctl(*args):
    """Runs `overlayctl ARGS --json` (an argument list, no shell) and returns (status, its one JSON
    object). Its stderr (progress of long builds) goes to the rule's log, else to the job's stderr."""
    args = [str(a) for a in args]
    # --json belongs to overlayctl, before a `--` that starts the command `lock` runs
    at = args.index("--") if "--" in args else len(args)
    cmd = [snakemake.params.get("overlayctl", "overlayctl"), *args[:at], "--json", *args[at:]]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=LOG, text=True)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        say(f"overlayctl {args[0]}: no JSON on stdout (exit {r.returncode}): {r.stdout[-2000:]}")
        sys.exit(r.returncode or 1)


def fail_on_error(status, result):
    """An overlayctl failure (`{"error": …}`) ends the job, its code in the log: with RETRYABLE for
    the codes that are worth a retry (`lock` exits 125 for its own failures), else overlayctl's status."""
    error = result.get("error")
    if not error:
        return
    line = f"{error['code']}: {error['message']}"
    if error.get("hint"):
        line += f" (hint: {error['hint']})"
    if error["code"] in RETRYABLE_CODES:
        status = RETRYABLE
        line += f" [exit {status}: temporary, retry later]"
    say(line)
    sys.exit(status or 1)


def named(files, key):
    """The files under `key` in snakemake.input/output, as a list of paths (none: [])."""
    if key not in files.keys():
        return []
    value = files[key]
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def write_json(path, value):
    with open(path, "w") as out:
        json.dump(value, out, indent=2)
        out.write("\n")
# --- common: end ---


source, target = str(snakemake.input[0]), str(snakemake.output.get("image", snakemake.output[0]))
size = snakemake.params.get("size")
if not size:
    say("overlay/resize: give params: size (MiB, or with a unit: 512M, 4G)")
    sys.exit(2)
if os.path.realpath(source) == os.path.realpath(target):
    say("overlay/resize: the output must be a new file, not the input")
    sys.exit(2)
# `overlayctl lock --shared` holds the lock Apptainer takes for :ro while cp runs, and fails at
# once if a writer holds the image; cp keeps a sparse image's holes.
status, result = overlayctl("lock", source, "--shared", "--", "cp", "--sparse=always", "--", source, target)
fail_on_error(status, result)
if status != 0:
    say(f"overlay/resize: copying {source} failed (exit {status})")
    sys.exit(status)
status, result = overlayctl("resize", target, "--size", size)
fail_on_error(status, result)
say(f"{target}: {result['previousSizeBytes']} -> {result['sizeBytes']} bytes")
if "json" in snakemake.output.keys():
    write_json(snakemake.output.json, result)
