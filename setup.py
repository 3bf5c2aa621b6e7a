from setuptools import find_packages, setup

from connnode import __version__

setup(
    name="connnode",
    version=__version__,
    description="A self-hostable WebPush push service: connection node and endpoint node",
    packages=find_packages(include=["connnode", "connnode.*"]),
    # the demo page's static files (connnode/endpoint/demo.py)
    package_data={"connnode.endpoint": ["demo/*.html", "demo/*.js"]},
    python_requires=">=3.11",
    install_requires=[
        "gevent", "gevent-websocket", "Flask", "gunicorn", "boto3", "simplejson",
        "statsd", "cryptography", "urllib3", "ua-parser", "supervisor",
    ],
    entry_points={"console_scripts": ["connnode = connnode.cli:main"]},
)
