# simbridge container: multi-stage, the same build steps the tests run (npm run build, npm prune --omit=dev;
# test/deploy.artifact.test.ts), a non-root user, state on a volume, health from /readyz.
FROM node:22-bookworm-slim AS build
WORKDIR /src
# better-sqlite3 compiles from source when no prebuilt binary matches.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build
RUN npm prune --omit=dev --no-audit --no-fund

FROM node:22-bookworm-slim
ENV NODE_ENV=production SIMBRIDGE_DATA_DIR=/var/lib/simbridge
WORKDIR /opt/simbridge
RUN groupadd --system simbridge \
 && useradd --system --gid simbridge --home-dir /var/lib/simbridge --shell /usr/sbin/nologin simbridge \
 && install -d -m 700 -o simbridge -g simbridge /var/lib/simbridge
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/config/examples ./config/examples
USER simbridge
VOLUME ["/var/lib/simbridge"]
# device MQTT, device HTTP, RADIUS accounting, admin API (bind admin.host to reach it from outside)
EXPOSE 1883 8080 1813/udp 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/bin/simbridge.js"]
CMD ["start", "--config", "/etc/simbridge/simbridge.yaml"]
