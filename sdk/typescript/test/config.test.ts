import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig } from "../src/config.js";
import { ConfigError } from "../src/errors.js";

test("defaults to the CLI's address without a token", () => {
  const c = resolveConfig({ env: {} });
  assert.deepEqual(c.addrs, ["http://127.0.0.1:7948"]);
  assert.equal(c.token, "");
  assert.equal(c.ca, "");
});

test("reads TASKWORKER_ADDR as a comma-separated list and TASKWORKER_TOKEN", () => {
  const c = resolveConfig({ env: { TASKWORKER_ADDR: " http://a:1/ , 127.0.0.1:7958,,https://b:3", TASKWORKER_TOKEN: "s3cret" } });
  assert.deepEqual(c.addrs, ["http://a:1", "http://127.0.0.1:7958", "https://b:3"]);
  assert.equal(c.token, "s3cret");
});

test("options win over the environment", () => {
  const c = resolveConfig({ addr: ["n1:1", "n2:2"], token: "opt", env: { TASKWORKER_ADDR: "http://env:1", TASKWORKER_TOKEN: "env" } });
  assert.deepEqual(c.addrs, ["http://n1:1", "http://n2:2"]);
  assert.equal(c.token, "opt");
});

test("reads the token from TASKWORKER_TOKEN_FILE when TASKWORKER_TOKEN is unset", () => {
  const dir = mkdtempSync(join(tmpdir(), "tw-cfg-"));
  writeFileSync(join(dir, "tok"), "from-file\nignored\n");
  assert.equal(resolveConfig({ env: { TASKWORKER_TOKEN_FILE: join(dir, "tok") } }).token, "from-file");
  assert.throws(() => resolveConfig({ env: { TASKWORKER_TOKEN_FILE: join(dir, "missing") } }), ConfigError);
});

test("a CA file makes bare addresses HTTPS and refuses http://", () => {
  const dir = mkdtempSync(join(tmpdir(), "tw-cfg-"));
  const ca = join(dir, "ca.pem");
  writeFileSync(ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
  const c = resolveConfig({ env: { TASKWORKER_ADDR: "n1:7948", TASKWORKER_CA_FILE: ca } });
  assert.deepEqual(c.addrs, ["https://n1:7948"]);
  assert.match(c.ca, /BEGIN CERTIFICATE/);
  assert.throws(() => resolveConfig({ addr: "http://n1:7948", caFile: ca, env: {} }), /is http:\/\/; use https/);
  writeFileSync(join(dir, "junk.pem"), "not a certificate");
  assert.throws(() => resolveConfig({ addr: "n1:1", caFile: join(dir, "junk.pem"), env: {} }), /no PEM certificate/);
  assert.throws(() => resolveConfig({ addr: "n1:1", caFile: join(dir, "none.pem"), env: {} }), ConfigError);
});

test("refuses addresses that are not a scheme, host and port", () => {
  for (const bad of ["ftp://x:1", "http://user:pw@x:1", "http://x:1/v1", "http://x:1/?a=b", "http://[bad"]) {
    assert.throws(() => resolveConfig({ addr: bad, env: {} }), ConfigError, bad);
  }
});

test("refuses a token that would break or forge a header, without showing it", () => {
  for (const bad of ["a b", "tok\r\nX-Evil: 1", "tök"]) {
    assert.throws(
      () => resolveConfig({ token: bad, env: {} }),
      (e: Error) => e instanceof ConfigError && !e.message.includes(bad),
    );
  }
});
