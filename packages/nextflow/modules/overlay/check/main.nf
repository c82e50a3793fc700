process OVERLAY_CHECK {
    tag "$meta.id"
    label 'process_single'

    // Runs on the host with overlayctl and e2fsprogs (no container needed; docs/nextflow.md).
    // Read-only: an image that is not clean fails the task, with the report on stderr. An image
    // in use by a writer is reported `locked` at once (never waited on): retry later.

    input:
    tuple val(meta), path(images)

    output:
    tuple val(meta), path("*.check.json"), emit: json
    tuple val("${task.process}"), val('overlayctl'), eval('overlayctl --version'), emit: versions_overlayctl, topic: versions
    tuple val("${task.process}"), val('e2fsprogs'), eval("e2fsck -V 2>&1 | sed -n '1s/^e2fsck //; 1s/ .*//p'"), emit: versions_e2fsprogs, topic: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args   ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    // `images` is one file or several: Nextflow writes a list as space-separated names, so it
    // stays unquoted here (staged names carry no spaces).
    """
    status=0
    overlayctl check ${images} ${args} --json > "${prefix}.check.json" || status=\$?

    if [ "\$status" -ne 0 ]; then
        echo "OVERLAY_CHECK: not every image is clean (exit status \$status):" >&2
        cat -- "${prefix}.check.json" >&2
        exit "\$status"
    fi
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo '{"images":[]}' > "${prefix}.check.json"
    """
}
