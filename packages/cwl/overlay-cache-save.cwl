#!/usr/bin/env cwl-runner
# overlayctl cache save: put an image into a directory cache store under a key. Used by
# overlay-setup.cwl. docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Save an overlay image to a cache store
doc: |
  Entries are immutable: a key that is already stored (another job saved it first) is a success
  that saves nothing. The image is read under a shared lock (E_LOCKED, exit 75, while a writer
  holds it).
hints:
  SoftwareRequirement:
    packages:
      overlayctl:
        specs: ["https://github.com/org/overlay-action"]
baseCommand: [overlayctl, cache, save, --json]
inputs:
  image:
    type: File
    inputBinding:
      position: 1
  key:
    type: string
    inputBinding:
      prefix: --key
  store:
    type: string
    doc: The cache store (a directory every node sees)
    inputBinding:
      prefix: --store
stdout: save.json
outputs:
  report:
    type: File
    doc: "`{saved, key, bytes, reason?}`"
    outputBinding:
      glob: save.json
successCodes: [0]
# exit statuses from packages/core/src/errors.ts (scripts/gen-workflows.mjs keeps this value)
temporaryFailCodes: [75] # gen-workflows: retryable
