# Sourced by the GPU scripts: the Python environment of a lent GPU machine, which has PyTorch but not every package
# ddip imports and no network. Wheels carried in .whl/ (diffusers, sigpy, nibabel, PyWavelets; docs/development.md)
# are installed to /tmp/site where an import fails; .gpu-assets/ (scripts/gpu_assets.py: the development volumes,
# the LPIPS weights) fills only what no installed package holds. Prints the GPU, the torch build and whether it sees
# the GPU; returns non-zero when ddip cannot be imported.
PY=${PYTHON:-python3}
if [ -d .whl ] && ! "$PY" -c "import diffusers, sigpy, nibabel" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# a regular package installed beats these namespace folders, so they only fill what is missing
export PYTHONPATH=$PWD:$PWD/.gpu-assets${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=60
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c "import torch, ddip.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
