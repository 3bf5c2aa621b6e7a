"""The broadcasts table (issue 15): the current version of every Megaphone
broadcast, one item per id.

    broadcast_id (S, hash key)   "<broadcaster>/<bchannel>"
    version      (S)             the version the broadcaster last PUT

Only ids holding a "/" are broadcasts: ``all`` skips others, so the
preflight's throw-away item (``PREFLIGHT_ID``) is never served.

The table is tiny (a handful of ids) and has no ``expiry``: the storage
sweeper, which only touches the router table and ``<message_tablename>_YYYY_MM``
tables, never looks at it.
"""
from connnode.db.dynamo import attr_names


PREFLIGHT_ID = "connnode-preflight"
# Provisioned capacity of the table: a few polls a minute per connection node.
READ_THROUGHPUT = WRITE_THROUGHPUT = 5


def broadcast_table_definition(read=READ_THROUGHPUT, write=WRITE_THROUGHPUT):
    return {
        "KeySchema": [{"AttributeName": "broadcast_id", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "broadcast_id", "AttributeType": "S"}],
        "ProvisionedThroughput": {"ReadCapacityUnits": read, "WriteCapacityUnits": write},
    }


class BroadcastTable:
    def __init__(self, dynamo, name):
        self.dynamo = dynamo
        self.name = name

    def set(self, broadcast_id, version):
        """Store ``version`` as the current one of ``broadcast_id`` (last write wins)."""
        self.dynamo.call("put_item", TableName=self.name, Item={
            "broadcast_id": {"S": broadcast_id},
            "version": {"S": version},
        })

    def delete(self, broadcast_id):
        self.dynamo.call("delete_item", TableName=self.name,
                         Key={"broadcast_id": {"S": broadcast_id}})

    def all(self):
        """{broadcast_id: version} of every item (consistent Scan, every page)."""
        found = {}
        start = None
        while True:
            kwargs = {"ExclusiveStartKey": start} if start else {}
            page = self.dynamo.call("scan", TableName=self.name, ConsistentRead=True,
                                    ProjectionExpression="#broadcast_id, #version",
                                    ExpressionAttributeNames=attr_names("broadcast_id", "version"),
                                    **kwargs)
            for item in page.get("Items", []):
                broadcast_id = item.get("broadcast_id", {}).get("S")
                version = item.get("version", {}).get("S")
                if broadcast_id and "/" in broadcast_id and version is not None:
                    found[broadcast_id] = version
            start = page.get("LastEvaluatedKey")
            if not start:
                return found
