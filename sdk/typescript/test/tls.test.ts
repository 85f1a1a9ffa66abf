import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client, ConnectionError } from "../src/index.js";

function haveOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** A CA and a server certificate for 127.0.0.1 signed by it, made with openssl. */
function makeCA(dir: string, name: string): { ca: string; key: string; cert: string } {
  const p = (f: string) => join(dir, `${name}-${f}`);
  const run = (args: string[]) => execFileSync("openssl", args, { stdio: "ignore" });
  run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "1", "-subj", `/CN=${name} test CA`]);
  run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("srv.key"), "-out", p("srv.csr"), "-subj", "/CN=127.0.0.1"]);
  writeFileSync(p("ext"), "subjectAltName=IP:127.0.0.1\n");
  run(["x509", "-req", "-in", p("srv.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial", "-out", p("srv.pem"), "-days", "1", "-extfile", p("ext")]);
  return { ca: p("ca.pem"), key: p("srv.key"), cert: p("srv.pem") };
}

test("HTTPS with a CA file trusts that CA only", { skip: !haveOpenssl() && "openssl is not installed" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tw-tls-"));
  const good = makeCA(dir, "good");
  const other = makeCA(dir, "other");
  let auth = "";
  const srv = createServer({ key: readFileSync(good.key), cert: readFileSync(good.cert) }, (req, res) => {
    auth = req.headers.authorization ?? "";
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ id: "t1", state: "succeeded", result: 4 }));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const addr = `127.0.0.1:${(srv.address() as AddressInfo).port}`;
  try {
    // A bare host:port means HTTPS once a CA file is given; keep-alive carries several calls.
    const c = new Client({ addr, caFile: good.ca, token: "tls-token", env: {} });
    assert.equal((await c.get("t1")).result, 4);
    assert.equal((await c.get("t1")).state, "succeeded");
    assert.equal(auth, "Bearer tls-token");
    await assert.rejects(new Client({ addr, caFile: other.ca, env: {} }).get("t1"), (e: Error) => e instanceof ConnectionError && /certificate|self.signed|verify/i.test(e.message));
    await assert.rejects(new Client({ addr: `https://${addr}`, env: {} }).get("t1"), ConnectionError);
    const viaEnv = new Client({ env: { TASKWORKER_ADDR: addr, TASKWORKER_CA_FILE: good.ca } });
    assert.equal((await viaEnv.get("t1")).id, "t1");
  } finally {
    srv.closeAllConnections();
    await new Promise<void>((r) => srv.close(() => r()));
  }
});
