#!/usr/bin/env cwl-runner
# overlayctl check: read-only e2fsck of Apptainer ext3 overlays. Runs on the host (no container:
# overlayctl needs e2fsprogs, not a container runtime). docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Check Apptainer ext3 overlay images (read-only e2fsck)
doc: |
  `overlayctl check IMAGE… --json`. The JSON report is the output `report`; the job fails unless
  every image is clean (exit 1: findings; the report, also on stderr, says which image and why).
  An image in use by a writer is reported `locked` at once, never waited on.
hints:
  SoftwareRequirement:
    packages:
      overlayctl:
        specs: ["https://github.com/org/overlay-action"]
baseCommand: [overlayctl, check, --json]
inputs:
  images:
    type: File[]
    doc: The ext3 overlay images
    inputBinding:
      position: 1
stdout: check.json
outputs:
  report:
    type: File
    doc: "`{images: [{path, status, problems, error?}], counts, exitCode}`"
    outputBinding:
      glob: check.json
successCodes: [0]
# exit statuses from packages/core/src/errors.ts (scripts/gen-workflows.mjs keeps this value)
temporaryFailCodes: [75] # gen-workflows: retryable
