process OVERLAY_SETUP {
    tag "$meta.id"
    label 'process_low'

    // overlayctl starts Apptainer itself: give this process no `container`, and run it where
    // overlayctl, Apptainer and e2fsprogs are installed (docs/nextflow.md).

    input:
    tuple val(meta), path(env_script)
    val base
    val cache_store

    output:
    tuple val(meta), path("*.img")       , emit: image
    tuple val(meta), path("*.setup.json"), emit: json
    tuple val("${task.process}"), val('overlayctl'), eval('overlayctl --version'), emit: versions_overlayctl, topic: versions
    tuple val("${task.process}"), val('apptainer'), eval('{ apptainer --version 2>/dev/null || singularity --version; } | sed "s/.* //"'), emit: versions_apptainer, topic: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args   ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    def store  = cache_store     ?: ''
    """
    image="${prefix}.img"
    store="${store}"

    # The cache key: everything that decides the image's content (base, create/build options,
    # build script). The same inputs give the same key on every node, so one build serves all.
    cat <<'OVERLAY_KEY_INPUTS' > key-inputs.txt
    overlay-setup v1
    base: ${base}
    args: ${args}
    OVERLAY_KEY_INPUTS
    cat -- "${env_script}" >> key-inputs.txt
    key_name="\$(printf '%s' "${prefix}" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-100)"
    key="\$key_name-\$(sha256sum key-inputs.txt | cut -c1-32)"

    origin=build
    if [ -n "\$store" ]; then
        mkdir -p -- "\$store"
        # A miss, a damaged entry or an unreadable store leaves no image behind: then we build.
        if ! overlayctl cache restore "\$image" --key "\$key" --store "\$store" --json > restore.json; then
            echo "OVERLAY_SETUP: cache restore failed, building instead:" >&2
            cat restore.json >&2
        fi
        if [ -f "\$image" ]; then
            origin=cache
        fi
    fi

    if [ "\$origin" = build ]; then
        status=0
        overlayctl build "\$image" --base "${base}" --script "${env_script}" ${args} --json > build.json || status=\$?
        if [ "\$status" -ne 0 ]; then
            echo "OVERLAY_SETUP: build failed (exit status \$status):" >&2
            cat build.json >&2
            exit "\$status"
        fi
        if [ -n "\$store" ]; then
            if ! overlayctl cache save "\$image" --key "\$key" --store "\$store" --json > save.json; then
                echo "OVERLAY_SETUP: cache save failed (the image is fine; other tasks will build it again):" >&2
                cat save.json >&2
            fi
        fi
    fi

    overlayctl info "\$image" --json > info.json

    # one line: overlayctl's JSON never holds a raw newline inside a string
    json_or_null() { if [ -s "\$1" ]; then tr -d '\\n' < "\$1"; else printf 'null'; fi; }
    {
        printf '{"key":"%s","source":"%s","restore":' "\$key" "\$origin"
        json_or_null restore.json
        printf ',"build":'
        json_or_null build.json
        printf ',"save":'
        json_or_null save.json
        printf ',"info":'
        json_or_null info.json
        printf '}\\n'
    } > "${prefix}.setup.json"
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch "${prefix}.img"
    echo '{"key":"stub","source":"stub","restore":null,"build":null,"save":null,"info":null}' > "${prefix}.setup.json"
    """
}
