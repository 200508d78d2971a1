#!/bin/sh
# Serves one HTTP connection: stdin and stdout are the client's socket (see serve.sh).
#
# busybox httpd runs CGI scripts only under /cgi-bin/ (or by file-name extension), and Debian's
# build has no proxy or rewrite support, so by itself it cannot answer /healthz and /infer.
# This script reads the request head, maps those two paths onto their CGI scripts, and hands
# the request (head and body, read in full and bounded) to `httpd -i`, which runs the script
# and writes the answer to the socket.
set -u

WWW=/app/www
MAX_LINE=4096       # bytes in the request line or one header line
MAX_HEADERS=64
MAX_BODY=65536
READ_TIMEOUT=10     # seconds a client may stall
TOKEN_FILE=/run/secrets/api-token

cr=$(printf '\r')

# reject STATUS: answer at once, without reading the rest of the request, and hang up.
reject() {
    printf 'HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1"
    exit 0
}

# read_line: the next CRLF- or LF-ended line of the request, in $line.
read_line() {
    IFS= read -r -t "$READ_TIMEOUT" -n "$MAX_LINE" line || reject "408 Request Timeout"
    [ "${#line}" -lt "$MAX_LINE" ] || reject "431 Request Header Fields Too Large"
    line=${line%"$cr"}
}

# (1) the request line, with the public paths mapped onto the CGI scripts
read_line
set -f
# shellcheck disable=SC2086 # split the request line into its three words
set -- $line
[ $# -eq 3 ] || reject "400 Bad Request"
method=$1 target=$2 version=$3
case $version in HTTP/1.[01]) ;; *) reject "505 HTTP Version Not Supported" ;; esac
case $target in
    /healthz | /healthz\?*) target=/cgi-bin/healthz${target#/healthz} ;;
    /infer | /infer\?*) target=/cgi-bin/infer${target#/infer} ;;
esac

# (2) the header fields, passed on as they came, but for the ones this script answers itself
fields=""
authorization=""
count=0
length=0
expect_continue=no
while read_line && [ -n "$line" ]; do
    count=$((count + 1))
    [ "$count" -le "$MAX_HEADERS" ] || reject "431 Request Header Fields Too Large"
    value=$(printf '%s' "${line#*:}" | tr -d ' \t')
    case $line in
        [Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:*)
            case $value in '' | *[!0-9]*) reject "400 Bad Request" ;; esac
            [ "${#value}" -le 9 ] && [ "$value" -le "$MAX_BODY" ] || reject "413 Payload Too Large"
            length=$((value + 0))
            ;;
        [Tt][Rr][Aa][Nn][Ss][Ff][Ee][Rr]-[Ee][Nn][Cc][Oo][Dd][Ii][Nn][Gg]:*)
            reject "411 Length Required"
            ;;
        [Ee][Xx][Pp][Ee][Cc][Tt]:*)
            [ "$value" = 100-continue ] && expect_continue=yes
            continue
            ;;
        [Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]:*)
            authorization=$value
            continue
            ;;
    esac
    fields="$fields$line$cr
"
done

# (3) /infer answers only with the API token, when the device gave the service one (the secret
#     api-token, mounted by the updater at /run/secrets/api-token); spaces are compared removed
case $target in
    /cgi-bin/infer*)
        if [ -f "$TOKEN_FILE" ]; then
            token=$(tr -d ' \t\r\n' < "$TOKEN_FILE")
            [ -n "$token" ] && [ "$authorization" = "Bearer$token" ] || reject "401 Unauthorized"
        fi
        ;;
esac

# (4) the body: a client that sent "Expect: 100-continue" waits for this before sending it
if [ "$expect_continue" = yes ] && [ "$length" -gt 0 ]; then
    printf 'HTTP/1.1 100 Continue\r\n\r\n'
fi
{
    printf '%s %s %s\r\n%s\r\n' "$method" "$target" "$version" "$fields"
    if [ "$length" -gt 0 ]; then
        timeout "$READ_TIMEOUT" head -c "$length"
    fi
} | httpd -i -h "$WWW"
