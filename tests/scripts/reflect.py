#!/usr/bin/env python3
"""Discovers a pgfleet gRPC server by reflection alone, as grpcurl, grpcui and
Postman do: lists its services and, with --call, calls one method with an
empty request, its types read from the server (no stubs, no .proto files).

Python's grpcio-reflection client asks reflection v1alpha only, so this also
checks that the server answers v1alpha.

    reflect.py 127.0.0.1:7600 --call pgfleet.v1.Query/ListServers

Prints one JSON object: {"services": [...], "response": {...}}. A failure is
one line on stderr, and exit status 1.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument(
        "--call",
        metavar="SERVICE/METHOD",
        help="a unary method to call with an empty request, as pgfleet.v1.Query/ListServers",
    )
    args = parser.parse_args()
    with grpc.insecure_channel(args.address) as channel:
        try:
            database = ProtoReflectionDescriptorDatabase(channel)
            out = {"services": sorted(database.get_services())}
            if args.call:
                service_name, _, method_name = args.call.partition("/")
                pool = DescriptorPool(database)
                method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
                request_type = message_factory.GetMessageClass(method.input_type)
                response_type = message_factory.GetMessageClass(method.output_type)
                call = channel.unary_unary(
                    f"/{service_name}/{method_name}",
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
                response = call(request_type(), timeout=10)
                out["response"] = json_format.MessageToDict(
                    response, preserving_proto_field_name=True
                )
        except grpc.RpcError as e:
            print(f"reflect.py: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except KeyError as e:
            print(f"reflect.py: {args.address} does not describe {e}", file=sys.stderr)
            return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
