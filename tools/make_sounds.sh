#!/usr/bin/env bash
# Regenerate the prompts in sounds/<lang>/<name>.wav from sounds/prompts.tsv.
#
# Speech comes from espeak-ng, sox turns it into what Asterisk's wav format
# reads without transcoding: 8 kHz, mono, 16-bit signed PCM. Every run rebuilds
# every prompt listed in the table and gives byte-identical files for the same
# table (sox -R fixes the dither seed), so it is safe to run again at any time.
# WAV files that are not in the table (added by an admin) are left alone.
#
# Usage: tools/make_sounds.sh            (needs: apt-get install espeak-ng sox)
# Then refresh the table of sounds/README.md, which this script rewrites
# between its "prompts:begin" and "prompts:end" markers.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sounds="$root/sounds"
table="$sounds/prompts.tsv"
readme="$sounds/README.md"

# Slower than espeak-ng's default 175 words/min: phone lines and listeners
# who did not expect a machine both need the time.
speed=150

for tool in espeak-ng sox soxi; do
    command -v "$tool" >/dev/null || {
        echo "make_sounds: $tool not found (apt-get install espeak-ng sox)" >&2
        exit 1
    }
done

voice_for() {
    case "$1" in
        en) echo en-us ;;
        *) echo "$1" ;;
    esac
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

langs=()
rows=()
while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    IFS=$'\t' read -r -a cols <<<"$line"
    if [[ ${#langs[@]} -eq 0 ]]; then
        [[ "${cols[0]}" == name ]] || { echo "make_sounds: $table: header must start with 'name'" >&2; exit 1; }
        langs=("${cols[@]:1}")
        continue
    fi
    rows+=("$line")
done <"$table"

name_re='^[A-Za-z0-9_-]{1,64}$'
for lang in "${langs[@]}"; do
    [[ "$lang" =~ $name_re ]] || { echo "make_sounds: bad language '$lang'" >&2; exit 1; }
done

md="$work/table.md"
{
    printf '| name |'
    for lang in "${langs[@]}"; do printf ' %s text | %s s |' "$lang" "$lang"; done
    printf '\n|---|'
    for _ in "${langs[@]}"; do printf -- '---|--:|'; done
    printf '\n'
} >"$md"

for line in "${rows[@]}"; do
    IFS=$'\t' read -r -a cols <<<"$line"
    name="${cols[0]}"
    [[ "$name" =~ $name_re ]] || { echo "make_sounds: bad prompt name '$name'" >&2; exit 1; }
    [[ ${#cols[@]} -eq $((${#langs[@]} + 1)) ]] || {
        echo "make_sounds: '$name' needs a text for each of: ${langs[*]}" >&2
        exit 1
    }
    printf '| `%s` |' "$name" >>"$md"
    for i in "${!langs[@]}"; do
        lang="${langs[$i]}"
        text="${cols[$((i + 1))]}"
        mkdir -p "$sounds/$lang"
        out="$sounds/$lang/$name.wav"
        # The text goes through a file so that nothing in it is read as an option.
        printf '%s\n' "$text" >"$work/text.txt"
        espeak-ng -v "$(voice_for "$lang")" -s "$speed" -b 1 -f "$work/text.txt" -w "$work/raw.wav"
        # silence/reverse/silence/reverse trims the quiet head and tail espeak-ng
        # leaves, so playback starts speaking at once. espeak-ng peaks near full
        # scale and the resampler overshoots, hence the gain before rate; norm
        # comes after rate so the peak it sets (-3 dBFS: room for codec
        # overshoot) is the one played. 0.1 s of tail keeps the last word from
        # being cut when the next prompt or a Dial follows immediately.
        sox -R "$work/raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$work/out.wav" \
            silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse \
            gain -6 rate -v 8000 norm -3 pad 0 0.1
        mv -f "$work/out.wav" "$out"
        seconds="$(printf '%.2f' "$(soxi -D "$out")")"
        printf '%-32s %6s s\n' "sounds/$lang/$name.wav" "$seconds"
        printf ' %s | %s |' "${text//|/\\|}" "$seconds" >>"$md"
    done
    printf '\n' >>"$md"
done

if [[ -f "$readme" ]] && grep -q '<!-- prompts:begin -->' "$readme"; then
    awk -v table="$md" '
        /<!-- prompts:end -->/ { skipping = 0 }
        !skipping { print }
        /<!-- prompts:begin -->/ {
            while ((getline row < table) > 0) print row
            skipping = 1
        }
    ' "$readme" >"$work/README.md"
    cat "$work/README.md" >"$readme"
    echo "updated the table in sounds/README.md"
fi
