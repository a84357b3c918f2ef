# syntax=docker/dockerfile:1
# The salespred image: the code location (dagster api grpc), the Dagster webserver and daemon,
# every run container, and the seller app all run from it (see docker-compose.yml).
#
#   docker build -t salespred:0.1.0 .
#   docker build -t salespred:0.1.0-mssql --build-arg INSTALL_MSODBCSQL18=1 .   # + SQL Server driver
#   docker build -t salespred:0.1.0-k8s --build-arg EXTRAS=deploy,k8s .        # Helm / K8sRunLauncher
#   add ",cloud" to EXTRAS for intermediates on gs:// or az:// (s3:// needs nothing more)

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- builder: resolve and install the project into a virtual environment, pinned by constraints.txt
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=deploy
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Metadata first, so that a code change does not invalidate the dependency layer's inputs twice.
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY salespred_assets ./salespred_assets
# The installed package has no pyproject.toml beside it: dg.load_from_defs_folder (salespred_assets/definitions.py)
# finds the project's [tool.dg] configuration in the nearest directory above the package that holds one, which in
# the image is /opt/venv. The check runs from / so that it loads the installed package, not the sources in /src.
# The message catalog is compiled (.po to .mo) before the install, so the wheel carries the .mo files.
RUN pip install -c constraints.txt babel \
 && for po in salespred_assets/i18n/locales/*/LC_MESSAGES/messages.po; do \
      pybabel compile -i "$po" -o "${po%.po}.mo" -l "$(basename "$(dirname "$(dirname "$po")")")"; done \
 && pip install -c constraints.txt ".[${EXTRAS}]" \
 && cp pyproject.toml /opt/venv/pyproject.toml \
 && cd / && python -c "import salespred_assets.definitions as d, salespred_assets.i18n as i, dagster_postgres, dagster_docker; i.check(); d.defs()"

# ---- runtime: the virtual environment, system ODBC drivers, and a non-root user
FROM ${PYTHON_IMAGE} AS runtime
# 1 adds Microsoft ODBC Driver 18 for SQL Server (msodbcsql18). Setting it accepts Microsoft's EULA
# (https://aka.ms/odbc18eula); without it the image carries only unixODBC and the MariaDB driver.
ARG INSTALL_MSODBCSQL18=0

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates unixodbc odbc-mariadb; \
    if [ "$INSTALL_MSODBCSQL18" = "1" ]; then \
      apt-get install -y --no-install-recommends curl; \
      . /etc/os-release; \
      curl -fsSL -o /tmp/packages-microsoft-prod.deb \
        "https://packages.microsoft.com/config/debian/${VERSION_ID}/packages-microsoft-prod.deb"; \
      dpkg -i /tmp/packages-microsoft-prod.deb; \
      rm /tmp/packages-microsoft-prod.deb; \
      apt-get update; \
      ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18; \
      apt-get purge -y --auto-remove curl; \
    fi; \
    rm -rf /var/lib/apt/lists/*; \
    odbcinst -q -d

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    SALESPRED_HOME=/var/lib/salespred \
    SALESPRED_STORAGE_DIR=/var/lib/salespred/storage

COPY --from=builder /opt/venv /opt/venv

# A fixed, unprivileged uid/gid; the directories that compose mounts as volumes are created here
# with this owner, so new named volumes inherit it.
RUN groupadd --system --gid 10001 salespred \
 && useradd --system --uid 10001 --gid salespred --home-dir /var/lib/salespred --shell /usr/sbin/nologin salespred \
 && mkdir -p "$DAGSTER_HOME" /opt/dagster/compute_logs "$SALESPRED_STORAGE_DIR" \
 && chown -R salespred:salespred /opt/dagster /var/lib/salespred

COPY --chown=salespred:salespred deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY --chown=salespred:salespred deploy/workspace.docker.yaml ${DAGSTER_HOME}/workspace.yaml

USER salespred:salespred
WORKDIR /var/lib/salespred

EXPOSE 4000 3000 8000
# The code location by default; docker-compose.yml gives each service its own command.
CMD ["dagster", "api", "grpc", "-m", "salespred_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
