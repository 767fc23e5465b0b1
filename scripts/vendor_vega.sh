#!/usr/bin/env bash
# Rebuild src/gan_pipeline/reports/dvc_plots.html, the HTML template that `dvc plots show` renders into
# (.dvc/config: plots.html_template), with vega, vega-lite and vega-embed inlined from npm, so that the
# plots render offline. DVC's default template loads them from a CDN instead.
# Usage: scripts/vendor_vega.sh [vega-version vega-lite-version vega-embed-version]   (needs npm)
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("vega@${1:-5.33.1}" "vega-lite@${2:-5.23.0}" "vega-embed@${3:-6.29.0}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "${versions[@]}" >/dev/null)
for tgz in "$work"/*.tgz; do
    mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"
done
python3 - "$work" src/gan_pipeline/reports/dvc_plots.html <<'PY'
import json, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
scripts, notices = [], []
for name in ("vega", "vega-lite", "vega-embed"):
    package = next(p / "package" for p in work.glob(f"{name}-[0-9]*") if p.is_dir())
    meta = json.loads((package / "package.json").read_text())
    version = meta["version"]
    code = (package / "build" / f"{name}.min.js").read_text()
    code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
    license_file = package / "LICENSE"  # vega's npm package ships none; its repository's LICENSE is the same
    license_text = (
        license_file.read_text()
        if license_file.exists()
        else f"License: {meta['license']}, https://github.com/vega/{name}/blob/v{version}/LICENSE\n"
    )
    assert "</script" not in code and "-->" not in license_text
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        assert placeholder not in code, (name, placeholder)
    notices.append(f"{name} {version} (npm), build/{name}.min.js:\n{license_text}")
    scripts.append(f"<script>/* {name} {version}, BSD-3-Clause, see the notice at the top */\n{code}\n</script>")
page = f"""<!DOCTYPE html>
<!-- gan-pipeline's template for `dvc plots show` (.dvc/config plots.html_template), written by
scripts/vendor_vega.sh: DVC puts the plots into the body; the libraries are inlined so that it renders offline.

{chr(10).join(notices)}-->
<html lang="en">
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>gan-pipeline plots</title>
{chr(10).join(scripts)}
<script>
// dvc_render calls vegaEmbed(element, spec) once per plot: draw SVG (crisp, and its marks can be checked).
(function () {{
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opts) {{ return embed(el, spec, Object.assign({{renderer: "svg"}}, opts)); }};
}})();
</script>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
body > div {{ margin-bottom: 2em; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""
out.write_text(page)
print(f"wrote {out} ({len(page) // 1024} KiB)")
PY
