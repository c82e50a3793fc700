#!/usr/bin/env cwl-runner
# overlayctl setup: restore an ext3 overlay from a cache store, or create it and build inside it.
# Used by overlay-setup.cwl, which then saves a new image. Runs on the host: overlayctl starts
# Apptainer itself for the build. docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Restore an overlay from a cache store, or create and build it
requirements:
  InlineJavascriptRequirement: {}
hints:
  SoftwareRequirement:
    packages:
      overlayctl:
        specs: ["https://github.com/org/overlay-action"]
# --no-save: overlay-setup.cwl saves in a step of its own, once the image is a workflow output
baseCommand: [overlayctl, setup, --json, --no-save]
inputs:
  image_name:
    type: string
    default: env.img
    doc: File name of the image
    inputBinding:
      position: 1
  size:
    type: string
    default: 1G
    doc: "Size of a new image: MiB (256) or with a unit (512M, 4G)"
    inputBinding:
      prefix: --size
  profile:
    type:
      type: enum
      symbols: [small, default, large]
    default: default
    doc: "Filesystem profile: small (4 KiB/inode, conda), default (16 KiB), large (1 MiB)"
    inputBinding:
      prefix: --profile
  create_dirs:
    type:
      - "null"
      - type: array
        items: string
        inputBinding:
          prefix: --create-dir
    doc: Directories to create under upper/ in a new image
  fakeroot:
    type: boolean
    default: false
    doc: Make upper/ owned by root (for apptainer --fakeroot)
    inputBinding:
      prefix: --fakeroot
  base:
    type: string?
    doc: "Container for the build: a SIF path or a reference (docker://…, oras://…)"
    inputBinding:
      prefix: --base
  build_script:
    type: File?
    doc: Script run inside the overlay on `base` unless the image was an exact cache hit
    loadContents: true
    inputBinding:
      prefix: --build
      valueFrom: $(self.contents)
  store:
    type: string?
    doc: Cache store (a directory every node sees); none = always build
    inputBinding:
      prefix: --store
  cache_key:
    type: string
    default: overlay
    doc: Key prefix; overlayctl adds a digest of the image settings, base and build script
    inputBinding:
      prefix: --cache-key
stdout: setup.json
outputs:
  image:
    type: File
    outputBinding:
      glob: $(inputs.image_name)
  report:
    type: File
    doc: "`{cacheHit, cacheOutcome, cacheKey, created, built, info, …}`"
    outputBinding:
      glob: setup.json
  cache_key_used:
    type: string
    outputBinding:
      glob: setup.json
      loadContents: true
      outputEval: $(JSON.parse(self[0].contents).cacheKey)
  cache_hit:
    type: boolean
    outputBinding:
      glob: setup.json
      loadContents: true
      outputEval: $(JSON.parse(self[0].contents).cacheHit)
successCodes: [0]
# exit statuses from packages/core/src/errors.ts (scripts/gen-workflows.mjs keeps this value)
temporaryFailCodes: [75] # gen-workflows: retryable
