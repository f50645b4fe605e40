# scripts/checks.sh: the counting and reporting of the check scripts (check-c.sh,
# check-readme-c.sh, check-docs.sh, check-deb.sh), which source it.
#
# Each check prints one line, "PASS: ...", "FAIL: ..." or "SKIP: ...", and the script
# ends with `finish`: "N passed, N failed" (", N skipped" when some were) and a
# non-zero exit status when a check failed or none passed. A failure shows the files
# it names (logs, diffs), their paths relative to $work when they are under it.

passed=0
failed=0
skipped=0

pass() {
    passed=$((passed + 1))
    echo "PASS: $1"
}

# fail MESSAGE [FILE...]: counts a failure and shows the files, 60 lines each.
fail() {
    failed=$((failed + 1))
    echo "FAIL: $1"
    shift
    local file
    for file in "$@"; do
        [ -s "$file" ] || continue
        echo "---- ${file#"${work:-}"/}"
        head -n 60 "$file" | sed 's/^/    /'
    done
}

skip() {
    skipped=$((skipped + 1))
    echo "SKIP: $1"
}

finish() {
    local line="$passed passed, $failed failed"
    [ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
    echo
    echo "$line"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
    exit
}
