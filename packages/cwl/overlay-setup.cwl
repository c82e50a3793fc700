#!/usr/bin/env cwl-runner
# Setup: restore the overlay from a cache store or create + build it, then save a new image to
# the store, so the next run (or a job on another node) restores it. docs/workflows.md#cwl
cwlVersion: v1.2
class: Workflow
label: Restore an overlay from a cache store, or create and build it, and save it
requirements:
  InlineJavascriptRequirement: {}
inputs:
  image_name: {type: string, default: env.img}
  size: {type: string, default: 1G}
  profile:
    type:
      type: enum
      symbols: [small, default, large]
    default: default
  create_dirs: string[]?
  fakeroot: {type: boolean, default: false}
  base: string?
  build_script: File?
  store: string?
  cache_key: {type: string, default: overlay}
outputs:
  image:
    type: File
    outputSource: restore_or_build/image
  report:
    type: File
    outputSource: restore_or_build/report
  save_report:
    type: File?
    outputSource: save/report
steps:
  restore_or_build:
    run: overlay-restore-or-build.cwl
    in:
      image_name: image_name
      size: size
      profile: profile
      create_dirs: create_dirs
      fakeroot: fakeroot
      base: base
      build_script: build_script
      store: store
      cache_key: cache_key
    out: [image, report, cache_key_used, cache_hit]
  save:
    run: overlay-cache-save.cwl
    when: $(inputs.store !== null && !inputs.hit)
    in:
      image: restore_or_build/image
      key: restore_or_build/cache_key_used
      store: store
      hit: restore_or_build/cache_hit
    out: [report]
