process OVERLAY_COMMIT {
    tag "$meta.id"
    label 'process_low'

    // Runs on the host with overlayctl and squashfs-tools (no container needed; docs/nextflow.md).
    // Do not pass --reset in task.ext.args: it would empty the input image, which is the output
    // of an earlier task.

    input:
    tuple val(meta), path(image)

    output:
    tuple val(meta), path("*.sqf")        , emit: layer
    tuple val(meta), path("*.commit.json"), emit: json
    tuple val("${task.process}"), val('overlayctl'), eval('overlayctl --version'), emit: versions_overlayctl, topic: versions
    tuple val("${task.process}"), val('squashfs-tools'), eval("mksquashfs -version 2>&1 | sed -n '1s/^mksquashfs version //; 1s/ .*//p'"), emit: versions_squashfs_tools, topic: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args   ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    # overlayctl's exit status is kept: 75 (E_LOCKED, E_TIMEOUT) is worth a retry (errorStrategy)
    status=0
    overlayctl commit "${image}" --output "${prefix}.sqf" ${args} --json > "${prefix}.commit.json" || status=\$?
    if [ "\$status" -ne 0 ]; then
        echo "OVERLAY_COMMIT: commit failed (exit status \$status):" >&2
        cat -- "${prefix}.commit.json" >&2
        exit "\$status"
    fi
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch "${prefix}.sqf"
    echo '{"stub":true}' > "${prefix}.commit.json"
    """
}
