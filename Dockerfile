# The MTA as a container image: `docker build -t mta .`, then
# `docker run -v $PWD/docker/mta.yaml:/etc/mta/mta.yaml mta` (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /opt/mta
COPY pyproject.toml README.md ./
COPY mta ./mta
COPY shaper ./shaper
RUN pip install --no-cache-dir . && useradd --system --no-create-home mta
USER mta
EXPOSE 9108
ENTRYPOINT ["mta"]
CMD ["run", "/etc/mta/mta.yaml"]
