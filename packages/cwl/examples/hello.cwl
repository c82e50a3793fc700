#!/usr/bin/env cwl-runner
# A step of yours, inside the overlay: it runs in the container below, and Apptainer mounts the
# overlay from APPTAINER_OVERLAY (cwltool passes no other Apptainer options). docs/workflows.md#cwl
cwlVersion: v1.2
class: CommandLineTool
label: Run a program installed in the overlay
requirements:
  DockerRequirement:
    # cwltool --singularity looks for overlay-example-base.sif in CWL_SINGULARITY_CACHE (or the
    # working directory) before pulling; a registry image works too: docker://mambaorg/micromamba:2
    dockerPull: overlay-example-base
baseCommand: [/opt/env/bin/hello]
inputs:
  name:
    type: string
    inputBinding:
      position: 1
  checked:
    type: File
    doc: The check report (so this step starts only after the check passed)
stdout: hello.txt
outputs:
  greeting:
    type: stdout
