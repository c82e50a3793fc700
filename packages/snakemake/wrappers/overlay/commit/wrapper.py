"""Freeze an Apptainer ext3 overlay into a read-only SquashFS layer with `overlayctl commit`.

Deletions are carried as whiteouts every reader honours; Apptainer stacks the layer with
`--overlay layer.sqf:ro`. The image is read under a shared lock (a container writing to it makes
the job fail at once with E_LOCKED) and is not changed.
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


image = str(snakemake.input.get("image", snakemake.input[0]))
layer = str(snakemake.output.get("layer", snakemake.output[0]))
args = ["commit", image, "--output", layer, "--force"]
for name in ("compression", "level", "base"):
    if snakemake.params.get(name):
        args += [f"--{name}", snakemake.params.get(name)]
for lower in named(snakemake.input, "layers"):
    args += ["--layer", lower]
status, result = overlayctl(*args)
fail_on_error(status, result)
say(f"{layer}: committed from {image}")
if "json" in snakemake.output.keys():
    write_json(snakemake.output.json, result)
