#!/usr/bin/env nextflow
/*
 * Build a conda environment into an Apptainer overlay once (or restore it from a cache store on
 * the shared filesystem), check it, freeze it into a read-only SquashFS layer, and run a process
 * per sample with that layer mounted read-only.
 *
 *   nextflow run packages/nextflow/examples/main.nf -c packages/nextflow/examples/nextflow.config
 *
 * Written for Nextflow DSL2 but NOT run under Nextflow in this repository (Nextflow cannot be
 * installed on its machines): the modules' script and stub blocks are run by the tests in
 * test/nextflow, task by task, with real images and Apptainer. See docs/nextflow.md.
 */

include { OVERLAY_SETUP  } from '../modules/overlay/setup/main'
include { OVERLAY_CHECK  } from '../modules/overlay/check/main'
include { OVERLAY_COMMIT } from '../modules/overlay/commit/main'

params.base        = 'docker://mambaorg/micromamba:2'
params.env_script  = "${projectDir}/env.sh"
params.cache_store = "${launchDir}/overlay-cache"   // on a cluster: a path every node sees
params.samples     = 'a,b,c'

process NUMPY_VERSION {
    tag "$sample"
    label 'process_single'
    container params.base
    // the frozen environment, read-only: any number of tasks can share it at once
    containerOptions { "--overlay ${layer}:ro" }

    input:
    path layer
    val sample

    output:
    tuple val(sample), stdout

    script:
    """
    /opt/envs/main/bin/python -c 'import numpy; print("${sample}", numpy.__version__)'
    """
}

workflow {
    env = Channel.of([ [ id: 'env' ], file(params.env_script, checkIfExists: true) ])

    OVERLAY_SETUP(env, params.base, params.cache_store)
    OVERLAY_CHECK(OVERLAY_SETUP.out.image)

    // commit only an image whose check passed
    checked = OVERLAY_SETUP.out.image
        .join(OVERLAY_CHECK.out.json)
        .map { meta, image, report -> [ meta, image ] }
    OVERLAY_COMMIT(checked)

    layer = OVERLAY_COMMIT.out.layer.map { meta, sqf -> sqf }.first()
    NUMPY_VERSION(layer, Channel.fromList(params.samples.tokenize(',')))
    NUMPY_VERSION.out.view { sample, line -> line.trim() }

    // the version of every tool the overlay modules ran, from the `versions` topic channel
    // (Nextflow >= 25.04; 24.04 and 24.10 need `nextflow.preview.topic = true`)
    channel.topic('versions')
        .unique()
        .map { process, tool, version -> "${process.tokenize(':').last()}: ${tool} ${version}" }
        .view()
}
