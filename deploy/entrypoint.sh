#!/bin/sh
# DeepSynth container entrypoint.
#   serve [SPEC] [options]   HTTP OCR server (default model: $DEEPSYNTH_MODEL, else rapidocr) on 0.0.0.0:$DEEPSYNTH_PORT
#   train CONFIG [k=v ...]   fine-tune (deepsynth train)
#   ocr SPEC FILES... [opts] read images / PDFs (deepsynth ocr)
#   any other deepsynth subcommand (evaluate, data, demo, version), or a program to run (bash, python, ...)
set -eu
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

cmd="${1:-serve}"
if [ "$#" -gt 0 ]; then shift; fi

case "$cmd" in
  serve)
    if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
      set -- "${DEEPSYNTH_MODEL:-rapidocr}" "$@"
    fi
    case " $* " in
      *" --host "* | *" --host="*) ;;
      *) set -- "$@" --host "${DEEPSYNTH_HOST:-0.0.0.0}" ;;
    esac
    case " $* " in
      *" --port "* | *" --port="*) ;;
      *) set -- "$@" --port "${DEEPSYNTH_PORT:-8000}" ;;
    esac
    exec deepsynth serve "$@"
    ;;
  train | ocr | evaluate | data | demo | version)
    exec deepsynth "$cmd" "$@"
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
