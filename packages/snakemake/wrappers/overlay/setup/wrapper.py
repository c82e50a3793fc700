"""Provide an Apptainer ext3 overlay holding an environment: restore it from a cache store, or
create it (and build inside it with a script run in the base container), check it, and save it
to the store so the next run, or a job on another node, restores it instead of building.

`overlayctl setup` restores or creates and builds; `overlayctl cache save` saves (the same two
steps the setup-overlay action runs). The cache key covers the image settings, the base, the
build script and `key_files`.
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
RETRYABLE_CODES = ("E_LOCKED", "E_TIMEOUT", "E_REGISTRY")  # gen-workflows: retryable-codes
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


p = snakemake.params
image = str(snakemake.output.get("image", snakemake.output[0]))
args = ["setup", image, "--size", p.get("size", "1G"), "--profile", p.get("profile", "default")]
if p.get("fakeroot", False):
    args.append("--fakeroot")
for d in p.get("create_dirs", []):
    args += ["--create-dir", d]
if p.get("base"):
    args += ["--base", p.get("base")]
script = named(snakemake.input, "script")
if script:
    with open(script[0]) as f:
        args += ["--build", f.read()]
elif p.get("build"):
    args += ["--build", p.get("build")]
for k in named(snakemake.input, "key_files"):
    args += ["--key-files", k]
store = p.get("store")
if store:
    args += ["--store", store, "--cache-key", p.get("cache_key", "overlay")]
else:
    args.append("--no-cache")
status, setup = overlayctl(*args)
fail_on_error(status, setup)
# with a store, setup saves a new image itself (verified first; an exact hit saves nothing)
report = {"setup": setup, "save": setup.get("saved")}
say(f"{image}: cache {setup['cacheOutcome']}, created {setup['created']}, built {setup['built']}")
if report["save"]:
    say(f"overlay/setup: {report['save'].get('message', '')}")
if "json" in snakemake.output.keys():
    write_json(snakemake.output.json, report)
