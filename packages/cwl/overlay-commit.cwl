#!/usr/bin/env cwl-runner
# overlayctl commit: freeze an ext3 overlay into a read-only SquashFS layer. Runs on the host
# (overlayctl needs squashfs-tools). docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Freeze an Apptainer ext3 overlay into a SquashFS layer
doc: |
  `overlayctl commit IMAGE --output LAYER --json`. Deletions are carried as whiteouts every
  reader honours; Apptainer stacks the layer with `--overlay layer.sqf:ro`. The image is read
  under a shared lock: a container writing to it fails the job at once with E_LOCKED (exit 75, a
  temporary failure) and is not changed.
hints:
  SoftwareRequirement:
    packages:
      overlayctl:
        specs: ["https://github.com/org/overlay-action"]
baseCommand: [overlayctl, commit, --json]
arguments:
  - prefix: --output
    valueFrom: $(inputs.layer_name)
inputs:
  image:
    type: File
    doc: The ext3 overlay image
    inputBinding:
      position: 1
  layer_name:
    type: string
    default: layer.sqf
    doc: File name of the layer
  compression:
    type:
      - "null"
      - type: enum
        symbols: [zstd, gzip, lz4, xz]
    doc: SquashFS compression (default zstd)
    inputBinding:
      prefix: --compression
stdout: commit.json
outputs:
  layer:
    # optional only so that cwltool can still classify a failed job by its exit status: a
    # missing output would turn a temporaryFail (E_LOCKED, 75) into a permanentFail
    type: File?
    doc: The SquashFS layer (always there when the job succeeded)
    outputBinding:
      glob: $(inputs.layer_name)
  report:
    type: File
    doc: "`{layer, bytes, files, compression, sha256, whiteouts, warnings}`"
    outputBinding:
      glob: commit.json
successCodes: [0]
# exit statuses from packages/core/src/errors.ts (scripts/gen-workflows.mjs keeps this value)
temporaryFailCodes: [75] # gen-workflows: retryable
