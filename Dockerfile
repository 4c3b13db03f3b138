# The service with the shipped graphs baked in. Build: docker build -t digits .
# Run:   docker run -p 8080:8080 digits      (the command the tests start: python -m service serve)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 HOME=/tmp
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY service/ service/
COPY conf/ conf/
COPY graphs/ graphs/
COPY labels/ labels/
COPY templates/ templates/
COPY static/ static/
COPY data/mnist/ data/mnist/

RUN useradd --uid 10001 --user-group --no-create-home digits \
    && mkdir -p var && chown digits:digits var
USER 10001
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8080"]
