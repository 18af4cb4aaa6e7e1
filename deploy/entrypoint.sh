#!/bin/sh
# DeepSynth container entrypoint.
#   serve [options]          HTTP OCR server: --model $DEEPSYNTH_MODEL (default rapidocr) on 0.0.0.0:$DEEPSYNTH_PORT
#                            unless --model/--host/--port are given (see deepsynth serve --help)
#   train CONFIG [k=v ...]   fine-tune (deepsynth train)
#   ocr FILES... [options]   read images / PDFs into JSONL (deepsynth ocr)
#   doctor [--gpu]           what the container can run; --gpu runs every CUDA path (docs/models.md)
#   any other deepsynth subcommand (eval, data, demo, demo-ui, version), or a program to run (bash, python, ...)
set -eu
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

cmd="${1:-serve}"
if [ "$#" -gt 0 ]; then shift; fi

case "$cmd" in
  serve)
    case " $* " in
      *" --model "* | *" --model="* | *" -m "*) ;;
      *) set -- --model "${DEEPSYNTH_MODEL:-rapidocr}" "$@" ;;
    esac
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
  train | ocr | eval | data | demo | demo-ui | version | doctor)
    exec deepsynth "$cmd" "$@"
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
