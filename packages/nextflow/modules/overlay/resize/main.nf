process OVERLAY_RESIZE {
    tag "$meta.id"
    label 'process_single'

    // Runs on the host with overlayctl and e2fsprogs (no container needed; docs/nextflow.md).

    input:
    tuple val(meta), path(image)
    val size

    output:
    tuple val(meta), path("*.img")        , emit: image
    tuple val(meta), path("*.resize.json"), emit: json
    tuple val("${task.process}"), val('overlayctl'), eval('overlayctl --version'), emit: versions_overlayctl, topic: versions
    tuple val("${task.process}"), val('e2fsprogs'), eval("e2fsck -V 2>&1 | sed -n '1s/^e2fsck //; 1s/ .*//p'"), emit: versions_e2fsprogs, topic: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args   ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}.resized"
    """
    if [ "${image}" = "${prefix}.img" ]; then
        echo "OVERLAY_RESIZE: input and output are both named ${prefix}.img; set task.ext.prefix" >&2
        exit 1
    fi

    # The input is a link to the output of the task that made it: resize a copy, so that task's
    # output (and -resume) stay valid. GNU cp keeps the holes of a sparse image.
    cp -- "${image}" "${prefix}.img"
    # overlayctl's exit status is kept: 75 (E_LOCKED, E_TIMEOUT) is worth a retry (errorStrategy)
    status=0
    overlayctl resize "${prefix}.img" --size "${size}" ${args} --json > "${prefix}.resize.json" || status=\$?
    if [ "\$status" -ne 0 ]; then
        echo "OVERLAY_RESIZE: resize failed (exit status \$status):" >&2
        cat -- "${prefix}.resize.json" >&2
        exit "\$status"
    fi
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}.resized"
    """
    touch "${prefix}.img"
    echo '{"stub":true}' > "${prefix}.resize.json"
    """
}
