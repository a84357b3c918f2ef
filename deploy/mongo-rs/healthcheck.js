// The mongo service's healthcheck (docker-compose.yml), run by mongosh every few seconds: it initiates
// the single-member replica set `rs0` the first time the server answers (idempotent: later runs find it
// initiated), and is healthy once this member is the writable primary. Change streams, which the
// new-opportunity sensor follows, need a replica set. The root credentials come from the container's
// environment, not the command line.
const admin = db.getSiblingDB("admin");
admin.auth(process.env.MONGO_INITDB_ROOT_USERNAME, process.env.MONGO_INITDB_ROOT_PASSWORD);
try {
  rs.status();
} catch (e) {
  if (e.codeName !== "NotYetInitialized") {
    throw e;
  }
  // `mongo` is the compose service name: clients (connecting with replicaSet=rs0) reach the member
  // under the host name the configuration holds.
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
}
quit(admin.runCommand({ hello: 1 }).isWritablePrimary ? 0 : 1);
