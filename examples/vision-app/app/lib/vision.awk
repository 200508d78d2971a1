# The vision-app classifier: parses the app config and the model, and, in "infer" mode,
# classifies one input vector. Prints exactly one line:
#   OK DTYPE ANSWER    ANSWER is the JSON answer ("ok" in "check" mode)
#   ERR CODE WHY       CODE is the HTTP status to answer with, WHY a short reason
#
#   awk -v mode=check|infer -f vision.awk part=config CONFIG part=model MODEL [part=input -]
#
# Config: key=value lines (labels=a,b,c and threshold=0.5); '#' starts a comment line.
# Model:  "vision-model 1", then id, dtype (int8 or fp16), classes, features, scale (int8 only),
#         and for each class c: "bias c B" and "weights c W1 .. Wn". An int8 weight is q * scale.
# Input:  `features` numbers in [0, 1], separated by whitespace or commas.

BEGIN {
    NUMBER = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
    INDEX = "^(0|[1-9][0-9]?)$"
    NAME = "^[A-Za-z0-9._-]+$"
    MAX_INPUT = 1024      # values read before giving up on an input
    MAX_CLASSES = 64
    MAX_FEATURES = 4096
}

# Reports the first problem only; `exit` then runs END, which stops at once.
function fail(code, why) {
    if (!failed)
        print "ERR " code " " why
    failed = 1
    exit 1
}

function trim(s) {
    sub(/^[ \t]+/, "", s)
    sub(/[ \t]+$/, "", s)
    return s
}

{ sub(/\r$/, "") }

part == "config" && $0 !~ /^[ \t]*(#|$)/ { config_line(); next }
part == "model" && $0 !~ /^[ \t]*(#|$)/ { model_line(); next }
part == "input" { input_line(); next }

function config_line(   eq, key, value, i) {
    eq = index($0, "=")
    if (!eq)
        fail(503, "config line " FNR " is not key=value")
    key = trim(substr($0, 1, eq - 1))
    value = trim(substr($0, eq + 1))
    if (key == "labels") {
        nlabels = split(value, labels, ",")
        for (i = 1; i <= nlabels; i++) {
            labels[i] = trim(labels[i])
            if (labels[i] !~ NAME)
                fail(503, "config label " i " is not made of letters, digits, '.', '_' or '-'")
        }
    } else if (key == "threshold") {
        if (value !~ NUMBER || value + 0 < 0 || value + 0 > 1)
            fail(503, "config threshold is not a number from 0 to 1")
        threshold = value + 0
        have_threshold = 1
    } else {
        fail(503, "config line " FNR " has an unknown key")
    }
}

function model_line(   i) {
    if (!magic) {
        if ($0 != "vision-model 1")
            fail(503, "model file does not start with 'vision-model 1'")
        magic = 1
    } else if ($1 == "id" && NF == 2 && $2 ~ NAME) {
        model_id = $2
    } else if ($1 == "dtype" && NF == 2 && ($2 == "int8" || $2 == "fp16")) {
        dtype = $2
    } else if ($1 == "classes" && NF == 2 && $2 ~ /^[1-9][0-9]*$/ && $2 + 0 <= MAX_CLASSES) {
        classes = $2 + 0
    } else if ($1 == "features" && NF == 2 && $2 ~ /^[1-9][0-9]*$/ && $2 + 0 <= MAX_FEATURES) {
        features = $2 + 0
    } else if ($1 == "scale" && NF == 2 && $2 ~ NUMBER && $2 + 0 > 0) {
        scale = $2 + 0
    } else if ($1 == "bias" && NF == 3 && $2 ~ INDEX && $3 ~ NUMBER && !($2 in bias)) {
        bias[$2] = $3 + 0
    } else if ($1 == "weights" && NF >= 3 && $2 ~ INDEX && !($2 in nweights)) {
        nweights[$2] = NF - 2
        for (i = 3; i <= NF; i++)
            weight[$2, i - 3] = $i
    } else {
        fail(503, "model line " FNR " is not understood")
    }
}

function input_line(   i) {
    gsub(/,/, " ")
    for (i = 1; i <= NF; i++) {
        if (++ninput > MAX_INPUT)
            fail(400, "the input has over " MAX_INPUT " values")
        if ($i !~ NUMBER)
            fail(400, "input value " ninput " is not a number")
        x[ninput] = $i + 0
    }
}

END {
    if (failed)
        exit 1
    check_config()
    check_model()
    if (mode == "check") {
        print "OK " dtype " ok"
        exit 0
    }
    check_input()
    print "OK " dtype " " classify()
}

function check_config() {
    if (!nlabels)
        fail(503, "config has no labels")
    if (!have_threshold)
        fail(503, "config has no threshold")
}

function check_model(   c, j, w) {
    if (!magic)
        fail(503, "model file is empty")
    if (model_id == "" || dtype == "" || !classes || !features)
        fail(503, "model header lacks one of id, dtype, classes, features")
    if (dtype == "int8" && !scale)
        fail(503, "int8 model has no scale")
    if (classes != nlabels)
        fail(503, "model has " classes " classes but the config names " nlabels " labels")
    for (c = 0; c < classes; c++) {
        if (!(c in bias) || nweights[c] != features)
            fail(503, "model class " c " lacks its bias or " features " weights")
        for (j = 0; j < features; j++) {
            w = weight[c, j]
            if (dtype == "int8" && (w !~ /^-?[0-9]+$/ || w + 0 < -128 || w + 0 > 127))
                fail(503, "model weight " c "," j " is not an int8")
            if (dtype == "fp16" && w !~ NUMBER)
                fail(503, "model weight " c "," j " is not a number")
            weight[c, j] = (dtype == "int8") ? w * scale : w + 0
        }
    }
}

function check_input(   i) {
    if (ninput != features)
        fail(400, "expected " features " input values, got " ninput + 0)
    for (i = 1; i <= ninput; i++)
        if (x[i] < 0 || x[i] > 1)
            fail(400, "input value " i " is outside [0, 1]")
}

# exp(v) with only + - * /: Debian's busybox awk is built without its math library. Halve v
# into [-0.5, 0.5], sum the Taylor series there, then square back up.
function exp_(v,   halvings, term, sum, i) {
    if (v < -700)
        return 0
    for (halvings = 0; v < -0.5 || v > 0.5; halvings++)
        v /= 2
    term = sum = 1
    for (i = 1; i <= 20; i++) {
        term *= v / i
        sum += term
    }
    for (; halvings > 0; halvings--)
        sum *= sum
    return sum
}

# Softmax over the linear scores; the label is the best class if its score clears the threshold.
function classify(   c, j, z, top, best, total, p, label, json) {
    for (c = 0; c < classes; c++) {
        z[c] = bias[c]
        for (j = 0; j < features; j++)
            z[c] += weight[c, j] * x[j + 1]
        if (c == 0 || z[c] > top) {
            top = z[c]
            best = c
        }
    }
    for (c = 0; c < classes; c++) {
        p[c] = exp_(z[c] - top)
        total += p[c]
    }
    label = (p[best] / total >= threshold) ? labels[best + 1] : "unknown"
    json = "{\"label\": \"" label "\", \"scores\": ["
    for (c = 0; c < classes; c++)
        json = json (c ? ", " : "") sprintf("%.4f", p[c] / total)
    return json "], \"model\": \"" model_id "\"}"
}
