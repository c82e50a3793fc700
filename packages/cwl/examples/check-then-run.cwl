#!/usr/bin/env cwl-runner
# Check the overlay, then run a step inside it. test/workflows/cwl.test.ts runs this file with
# job.yml:
#   APPTAINER_OVERLAY=$PWD/env.img:ro cwltool --singularity check-then-run.cwl job.yml
# APPTAINER_OVERLAY must name the same image as the `image` input (an absolute path, `:ro` so
# that many steps can share it). docs/workflows.md#cwl
cwlVersion: v1.2
class: Workflow
label: Check an overlay image, then run a step inside it
inputs:
  image: File
  name: string
outputs:
  report:
    type: File
    outputSource: check/report
  greeting:
    type: File
    outputSource: hello/greeting
steps:
  check:
    run: ../overlay-check.cwl
    in:
      images:
        source: [image]
        linkMerge: merge_nested
    out: [report]
  hello:
    run: hello.cwl
    in:
      name: name
      checked: check/report
    out: [greeting]
