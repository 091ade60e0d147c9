#!/usr/bin/env bash
# The inputs of the line count in examples/blog/ADOPTING.md, and the count itself.
#
# The files next to this script are not built by cargo (cargo discovers examples only as
# examples/*.rs and examples/*/main.rs) and nothing includes them; they exist to be
# compared with examples/blog/app.rs:
#
#   app_single.rs  app.rs made single-backend mechanically: `type Conn` is SQLite's
#                  connection, the `Backend` trait, its macro and the generic where-clauses
#                  are gone, `db()` and the newest-posts query are plain functions,
#                  `Db<C>` is `Db<Conn>`.
#   app_noidem.rs  app_single.rs without `Idempotency-Key` (the POSTs' header parameters,
#                  `idempotency_key()`, the replay header, `retry_once_async_with_error`,
#                  the 422 of a reused key) and without `GET /stats`.
#   plain.rs       app_noidem.rs's service written on plain diesel: the same routes,
#                  statuses and bodies, an r2d2 pool in the state, every read and write a
#                  diesel query in `spawn_blocking` (writes in `conn.transaction`), versions
#                  checked and bumped in the UPDATEs for the same ETags and 412s,
#                  `INSERT ... RETURNING`, and the same mapping of diesel errors to HTTP
#                  that app.rs keeps.
#
# Each of them compiled with `cargo build --all-features` when it was last changed
# (included in a scratch example with `#[path = "..."] mod app;`) and is formatted
# with rustfmt. When app.rs changes, change these files the same way and run again.
#
# Usage, from the repository root: examples/blog/adoption/count.sh (needs GNU diff and awk)
#
# `+` and `-` are the added and removed lines of `diff -u` (a changed line counts once
# each way). "code only" leaves out the lines whose text, after leading white space,
# starts with `//` (comments, `///` and `//!` docs); blank lines are counted as code.
set -euo pipefail
cd "$(dirname "$0")"

# count FROM TO: prints "+A -R code only: +a -r"
count() {
    local diff
    diff=$({ diff -u "$1" "$2" || [ $? -eq 1 ]; } | tail -n +3)
    local added removed code_added code_removed
    added=$(grep -c '^+' <<<"$diff" || true)
    removed=$(grep -c '^-' <<<"$diff" || true)
    code_added=$(grep '^+' <<<"$diff" | grep -vc '^+[[:space:]]*//' || true)
    code_removed=$(grep '^-' <<<"$diff" | grep -vc '^-[[:space:]]*//' || true)
    printf '%-40s %5s %5s   %s\n' "$3" "+$added" "-$removed" "+$code_added -$code_removed"
}

# areas FROM TO: the same changed lines by where they are. A line's place is the region of
# its own file (FROM for a removed line, TO for an added one) that it falls in; the
# regions start at the lines matched below. Lines starting with `//` are "comments and
# docs" wherever they are, and the handlers' `State<..>` and `router(db: ..)` lines are
# "the state's type".
areas() {
    # diff exits with 1 when the files differ.
    { diff --old-line-format='-%l
' --new-line-format='+%l
' --unchanged-line-format=' %l
' "$1" "$2" || [ $? -eq 1 ]; } | awk '
    function region(text, current) {
        if (text ~ /^use /) return "imports"
        if (text ~ /^pub mod migrations/) return "setup"
        if (text ~ /^#\[derive\(Queryable/) return "models"
        if (text ~ /^\/\/\/ The connection type/) return "setup"
        if (text ~ /^\/\/\/ The newest published posts/) return "list"
        if (text ~ /^\/\/\/ The handlers/) return "handlers"
        if (text ~ /^\/\/\/ `\?limit=`/) return "other"
        if (text ~ /^\/\/\/ Runs a write/) return "helpers"
        if (text ~ /^\/\/\/ The response of a POST/) return "other"
        if (text ~ /^\/\/\/ An HTTP error decided/) return "errors"
        return current
    }
    BEGIN {
        old = "docs"; new = "docs"
        label["handlers"] = "handler bodies: the calls"
        label["list"] = "the newest-posts query function"
        label["errors"] = "errors: the library Error to HTTP"
        label["comments"] = "comments and docs"
        label["state"] = "the state type: Db<Conn>, not the pool"
        label["models"] = "models: Cached, #[cache(..)]"
        label["setup"] = "setup: db() instead of the pool type"
        label["helpers"] = "helpers: write() / blocking()"
        label["imports"] = "imports"
        label["other"] = "other"
        label["docs"] = "module docs (code)"
    }
    {
        tag = substr($0, 1, 1); text = substr($0, 2)
        if (tag != "+") old = region(text, old)
        if (tag != "-") new = region(text, new)
        if (tag == " ") next
        area = (tag == "-") ? old : new
        if (text ~ /^[[:space:]]*\/\//) area = "comments"
        else if (area == "handlers" && text ~ /State<|fn router\(db:/) area = "state"
        count[area, tag]++; total[tag]++
    }
    END {
        n = split("handlers list errors comments state models setup helpers imports other docs", order, " ")
        for (i = 1; i <= n; i++) {
            a = order[i]
            if ((a, "+") in count || (a, "-") in count)
                printf "  %-40s %5s %5s\n", label[a], "+" count[a, "+"] + 0, "-" count[a, "-"] + 0
        }
        printf "  %-40s %5s %5s\n", "total", "+" total["+"] + 0, "-" total["-"] + 0
    }'
}

printf '%-40s %5s %5s   %s\n' "from -> to" "+" "-" "code only"
count plain.rs app_noidem.rs "plain diesel -> diesel-l2, same features"
count app_noidem.rs app_single.rs "... + Idempotency-Key and GET /stats"
count app_single.rs ../app.rs "... + generic over three backends"
count plain.rs ../app.rs "plain diesel -> app.rs as committed"
echo
echo "plain diesel -> diesel-l2, same features (plain.rs -> app_noidem.rs), by area:"
areas plain.rs app_noidem.rs
