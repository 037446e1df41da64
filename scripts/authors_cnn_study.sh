#!/usr/bin/env bash
# The GradInit paper's CNN claims under the authors' protocol (RESULTS.md, "The paper's CNN
# claims under the authors' protocol"): Fashion-MNIST zero-padded to 32x32, 20,000 training and
# 5,000 test images, 5 epochs, 3 seeds, `--recipe authors-cnn`; VGG-19 and ResNet-32 at width
# 16, without and with BN. Every command is resumable run by run: run this script again (or
# several copies at once) to continue; `STAGES="vgg-nobn resnet-nobn"` picks tables.
# Extra arguments go to every command (e.g. `--device cuda`).
set -euo pipefail
INITLAB=${INITLAB:-.venv/bin/initlab}
OUT=${OUT:-runs/authors-cnn}
COMMON=(--recipe authors-cnn --data fashion-mnist --subset 20000 --test-subset 5000 --epochs 5
        --seeds 3)
CORE=default,default+gradinit-authors,kaiming,torch-default,metainit
WAITS=default+gradinit,torch-default+gradinit      # the library's default search
WARM=torch-default+gradinit-warmstart               # its warm start alone
FAMILY=xavier,orthogonal,zero,lsuv,emergence
VGG=(--model cifar-vgg --depth 19 --width 16)
RESNET=(--model resnet --depth 32 --width 16)
run() { OMP_NUM_THREADS=1 nice -n 10 $INITLAB compare "${COMMON[@]}" "$@"; }
for stage in ${STAGES:-vgg-nobn resnet-nobn vgg-bn resnet-bn vgg-nobn-gradinit \
                      resnet-nobn-gradinit vgg-bn-gradinit resnet-bn-gradinit vgg-family \
                      resnet-family}; do
  case $stage in
    vgg-nobn)             run "${VGG[@]}" --no-bn --methods $CORE --out $OUT/vgg19-nobn "${@}" ;;
    resnet-nobn)          run "${RESNET[@]}" --no-bn --methods $CORE --out $OUT/resnet32-nobn "${@}" ;;
    vgg-bn)               run "${VGG[@]}" --bn --methods $CORE --out $OUT/vgg19-bn "${@}" ;;
    resnet-bn)            run "${RESNET[@]}" --bn --methods $CORE --out $OUT/resnet32-bn "${@}" ;;
    vgg-nobn-gradinit)    run "${VGG[@]}" --no-bn --methods $WAITS,$WARM --out $OUT/vgg19-nobn "${@}" ;;
    resnet-nobn-gradinit) run "${RESNET[@]}" --no-bn --methods $WAITS,$WARM \
                              --out $OUT/resnet32-nobn "${@}" ;;
    # the BN tables' default-search rows ran without the growth bound (RESULTS.md says so)
    vgg-bn-gradinit)      run "${VGG[@]}" --bn --methods $WAITS --set gradinit.max_growth=inf \
                              --out $OUT/vgg19-bn "${@}" ;;
    resnet-bn-gradinit)   run "${RESNET[@]}" --bn --methods $WAITS --set gradinit.max_growth=inf \
                              --out $OUT/resnet32-bn "${@}" ;;
    vgg-family)           run "${VGG[@]}" --no-bn --methods $FAMILY --out $OUT/vgg19-nobn "${@}" ;;
    resnet-family)        run "${RESNET[@]}" --no-bn --methods $FAMILY,fixup,skipinit \
                              --out $OUT/resnet32-nobn "${@}" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
