#!/usr/bin/env cwl-runner
# overlayctl resize: grow or shrink an ext3 overlay, crash-safely. Runs on the host (overlayctl
# needs e2fsprogs). docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Grow or shrink an Apptainer ext3 overlay
doc: |
  The runner copies the input into the job's directory (a writable InitialWorkDir entry; the input
  stays as it was), then `overlayctl resize COPY --size SIZE --json` resizes the copy. Shrinking
  below what is used is refused (E_SHRINK_TOO_SMALL, exit 2). The runner's copy reads and writes
  the whole file: a sparse image loses its holes.
requirements:
  InitialWorkDirRequirement:
    listing:
      - entry: $(inputs.image)
        entryname: $(inputs.image_name)
        writable: true
hints:
  SoftwareRequirement:
    packages:
      overlayctl:
        specs: ["https://github.com/org/overlay-action"]
baseCommand: [overlayctl, resize, --json]
arguments:
  - position: 1
    valueFrom: $(inputs.image_name)
inputs:
  image:
    type: File
    doc: The ext3 overlay image
  image_name:
    type: string
    default: resized.img
    doc: File name of the resized image
  size:
    type: string
    doc: "New size: MiB (256) or with a unit (512M, 4G)"
    inputBinding:
      prefix: --size
      position: 2
stdout: resize.json
outputs:
  image_out:
    type: File
    doc: The resized image
    outputBinding:
      glob: $(inputs.image_name)
  report:
    type: File
    doc: "`{path, sizeBytes, previousSizeBytes, changed, …}` (the image's info after the resize)"
    outputBinding:
      glob: resize.json
successCodes: [0]
# exit statuses from packages/core/src/errors.ts (scripts/gen-workflows.mjs keeps this value)
temporaryFailCodes: [75] # gen-workflows: retryable
