#!/bin/sh
. /etc/app.conf
echo "$greeting from the demo app"
