"""Serving: the teacher box facing its edges and the people who run it.

``server`` (the ROUTER socket: escalations in, acks, reviews and release pushes out),
``review`` (who gives the teacher's verdict, and the review workers), ``keys`` (CurveZMQ
keys and the allow-list), ``cases`` (a person lists and corrects stored cases),
``report`` (how a deployment is doing per release and edge).

It pushes whatever release ``teacher.release`` says is active; it trains nothing.
"""
