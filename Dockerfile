# The container image of the Kubernetes profile (profiles/kubernetes): embedlens installed, not editable,
# with the same steps as the README's install without make. Build and push it, then set
# container-image in profiles/kubernetes/config.yaml:
#     docker build -t registry.example.org/embedlens:0.1.0 . && docker push registry.example.org/embedlens:0.1.0
FROM python:3.12-slim

WORKDIR /opt/embedlens
COPY pyproject.toml README.md ./
COPY embedlens/ embedlens/
RUN python -m pip install --no-cache-dir ".[demo]" snakemake-storage-plugin-s3
