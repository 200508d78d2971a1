# Helpers for the CGI scripts (sourced, not run).
#
# busybox httpd turns a leading "Status:" line into the response's status line. Every answer
# carries its length, so a client need not wait for the connection to close.

VISION_AWK=/app/lib/vision.awk

# status_line CODE: "CODE Reason".
status_line() {
    case $1 in
        200) echo "200 OK" ;;
        400) echo "400 Bad Request" ;;
        404) echo "404 Not Found" ;;
        405) echo "405 Method Not Allowed" ;;
        413) echo "413 Payload Too Large" ;;
        503) echo "503 Service Unavailable" ;;
        *) echo "500 Internal Server Error" ;;
    esac
}

# respond CODE CONTENT_TYPE BODY [HEADER_LINE]: one complete CGI answer; BODY gets a newline.
respond() {
    printf 'Status: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n' \
        "$(status_line "$1")" "$2" $((${#3} + 1))
    if [ -n "${4:-}" ]; then
        printf '%s\r\n' "$4"
    fi
    printf '\r\n'
    if [ "$REQUEST_METHOD" != HEAD ]; then
        printf '%s\n' "$3"
    fi
}

# json_error CODE MESSAGE [HEADER_LINE]: MESSAGE is one of ours, never the client's text.
json_error() {
    respond "$1" application/json "{\"error\": \"$2\"}" "${3:-}"
}

# run_model MODE: the one-line verdict of vision.awk ("OK DTYPE ANSWER" or "ERR CODE WHY") for
# the mounted config and model, and, in "infer" mode, the input vector on stdin.
run_model() {
    if [ ! -f "$VISION_CONFIG" ] || [ ! -r "$VISION_CONFIG" ]; then
        echo "ERR 503 config file is missing"
    elif [ ! -f "$VISION_MODEL" ] || [ ! -r "$VISION_MODEL" ]; then
        echo "ERR 503 model file is missing"
    elif [ "$1" = infer ]; then
        awk -v mode=infer -f "$VISION_AWK" part=config "$(operand "$VISION_CONFIG")" \
            part=model "$(operand "$VISION_MODEL")" part=input -
    else
        awk -v mode=check -f "$VISION_AWK" part=config "$(operand "$VISION_CONFIG")" \
            part=model "$(operand "$VISION_MODEL")"
    fi
}

# operand PATH: PATH as an awk file operand (a relative "a=b" would be read as an assignment).
operand() {
    case $1 in
        /*) printf '%s' "$1" ;;
        *) printf './%s' "$1" ;;
    esac
}
