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
    path "versions.yml"                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args   ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    if ! overlayctl commit "${image}" --output "${prefix}.sqf" ${args} --json > "${prefix}.commit.json"; then
        echo "OVERLAY_COMMIT: commit failed:" >&2
        cat -- "${prefix}.commit.json" >&2
        exit 1
    fi

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        overlayctl: \$(overlayctl --version)
        squashfs-tools: \$(mksquashfs -version 2>&1 | awk 'NR == 1 {print \$3}')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch "${prefix}.sqf"
    echo '{"stub":true}' > "${prefix}.commit.json"

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        overlayctl: \$(overlayctl --version)
        squashfs-tools: \$(mksquashfs -version 2>&1 | awk 'NR == 1 {print \$3}')
    END_VERSIONS
    """
}
