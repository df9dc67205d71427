#!/bin/sh
# Entrypoint of the dagster-platform images: make the models baked into the image visible
# where the settings look for them (<state>/models), then run the command.
#
# The state folder is a volume mounted at run time, so the models cannot be baked into it: they
# live in the image under $DAGSTER_PLATFORM_BAKED_MODELS and <state>/models is a symlink to that
# path. The link is absolute, so every container sharing the volume resolves it inside its own
# image (the CPU and the GPU image each bring their own copy). A real <state>/models folder, e.g.
# one an operator prepared by hand, is left alone.
set -u

state="${DAGSTER_PLATFORM_STATE:-/var/lib/dagster-platform}"
baked="${DAGSTER_PLATFORM_BAKED_MODELS:-/opt/dagster-platform/models}"
link="$state/models"

if [ -d "$baked" ]; then
    mkdir -p "$state" 2>/dev/null || true
    if [ -L "$link" ] || [ ! -e "$link" ]; then
        if [ "$(readlink "$link" 2>/dev/null)" != "$baked" ]; then
            # several containers may start at once; whoever loses the race finds the link made
            ln -sfn "$baked" "$link" 2>/dev/null \
                || [ "$(readlink "$link" 2>/dev/null)" = "$baked" ] \
                || echo "entrypoint: could not link $link -> $baked" >&2
        fi
    fi
fi

exec "$@"
